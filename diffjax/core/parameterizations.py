"""What the network's output means: eps, x0, v or EDM's F, as objects that own the network's
input scale c_in, its noise conditioning c_noise and the skip/output scales c_skip, c_out.

Forward process: x_t = alpha x_0 + sigma eps. Every parameterization writes the denoised
estimate as x0_hat = c_skip x_t + c_out F(c_in x_t, c_noise), where F is the network:
  eps: F predicts the noise;  x0: the clean image;  v = alpha eps - sigma x0 (Salimans & Ho 2022);
  velocity: the flow-matching velocity dx_t/dt = alpha'(t) x0 + sigma'(t) eps (Lipman et al. 2023;
       SiT): eps - x0 on the linear interpolant; it needs the schedule's rates, so it is built
       with the schedule;
  edm: F of the EDM preconditioning (Karras et al. 2022, Table 1) at the VE-equivalent noise level
       s = sigma / alpha acting on x_t / alpha, so it works on VP schedules too
       (x_t / alpha = x0 + (sigma / alpha) eps);
  consistency: a consistency model f(x, s) (Song et al. 2023, App. C): EDM's c_in, CM's
       c_skip = sd^2 / ((s - s_min)^2 + sd^2) and c_out = sd (s - s_min) / sqrt(sd^2 + s^2), so
       x0_hat = x_t exactly at the schedule's lowest level s_min (its t = 0); built with the
       schedule. c_noise = 250 ln(s), the CM code's 1000 * 0.25 ln(sigma);
  mean_velocity: MeanFlow's average velocity u(x_t, r, t) = (x_t - x_r) / (t - r) over [r, t] of
       the flow ODE (Geng et al. 2025), a network of two noise inputs (1000 t, 1000 (t - r)), the
       paper's (t, t - r) conditioning. At r = t it is the instantaneous velocity, so every
       velocity converter and sampler applies there; the end time r reaches the network only
       through network_output(..., r=r) (the mean_flow sampler). Built with the schedule.
  x0_latent: a GAN generator's x0 = G(x_t, z, t) (DDGAN, Xiao et al. 2022): x0 with a latent
       z ~ N(0, I) [B, latent_dim] as the network's second noise input (network_output(..., r=z));
       without one z = 0.
c_noise, the scalar the network is conditioned on: EDM's ln(s) / 4 (Table 1) for edm; for the
others the step index t T - 1 on discrete schedules (DDPM), 1000 t on continuous ones (score_sde).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp

from diffjax.core import consistency
from diffjax.registry import Registry

# Picked by config.diffusion.parameterization; sigma_data is config.diffusion.sigma_data.
PARAMETERIZATIONS = Registry("parameterization", "diffusion.parameterization", "diffusion")


def bcast(coef, x):
    """[B] -> [B, 1, 1, 1] to broadcast against images."""
    coef = jnp.asarray(coef, x.dtype)
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


def _f32(*values):
    return tuple(jnp.asarray(v, jnp.float32) for v in values)


# ---------------------------------------------------------------------------------------------
# Converters. alpha, sigma: [B] (or scalars); images: [B, H, W, C].


def x0_from_eps(x_t, eps, alpha, sigma):
    """x0 = (x_t - sigma eps) / alpha."""
    return (x_t - bcast(sigma, x_t) * eps) / bcast(alpha, x_t)


def eps_from_x0(x_t, x0, alpha, sigma):
    """eps = (x_t - alpha x0) / sigma."""
    return (x_t - bcast(alpha, x_t) * x0) / bcast(sigma, x_t)


def v_from_x0_eps(x0, eps, alpha, sigma):
    """v = alpha eps - sigma x0."""
    return bcast(alpha, x0) * eps - bcast(sigma, x0) * x0


def x0_eps_from_v(x_t, v, alpha, sigma):
    """Inverts (x_t, v) -> (x0, eps) for any alpha, sigma (not only VP):
    x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2),
    eps = (sigma x_t + alpha v) / (alpha^2 + sigma^2)."""
    a, s = bcast(alpha, x_t), bcast(sigma, x_t)
    norm = a**2 + s**2
    return (a * x_t - s * v) / norm, (s * x_t + a * v) / norm


def edm_preconditioning(alpha, sigma, sigma_data: float = 0.5):
    """EDM (Karras et al. 2022, Table 1) c_skip, c_out, c_in at the VE-equivalent noise level
    s = sigma / alpha, acting on x_t / alpha:  c_skip = sd^2 / (s^2 + sd^2),
    c_out = s sd / sqrt(s^2 + sd^2),  c_in = 1 / sqrt(s^2 + sd^2).  alpha, sigma: [B] or scalars."""
    alpha, sigma = _f32(alpha, sigma)
    sigma_ve = sigma / alpha
    norm = jnp.sqrt(sigma_ve**2 + sigma_data**2)
    return sigma_data**2 / norm**2, sigma_ve * sigma_data / norm, 1.0 / norm


# ---------------------------------------------------------------------------------------------
# Parameterizations.


@dataclasses.dataclass(frozen=True)
class Parameterization:
    """The base: eps, x0 and v feed the network x_t unscaled (c_in = 1)."""

    name: ClassVar[str] = ""
    num_noise_inputs: ClassVar[int] = 1  # c_noise's arrays (2: a flow map's (t, t - r))
    sigma_data: float = 0.5

    def c_in(self, alpha, sigma):
        """The factor the network input x_t is multiplied by: [B] or scalar."""
        alpha, sigma = _f32(alpha, sigma)
        return jnp.ones_like(alpha * sigma)

    def c_noise(self, schedule, t):
        """The scalar the network is conditioned on: the step index t T - 1 for discrete
        schedules (DDPM), 1000 t for continuous ones (score_sde). t: [B] -> [B] float32."""
        if schedule.is_discrete:
            return jnp.asarray(t, jnp.float32) * schedule.num_timesteps - 1.0
        return 1000.0 * jnp.asarray(t, jnp.float32)

    def c_skip_out(self, alpha, sigma):
        """(c_skip, c_out) with x0_hat = c_skip x_t + c_out F: [B] or scalars each."""
        raise NotImplementedError

    def x0_eps(self, x_t, output, alpha, sigma):
        """Network output [B,H,W,C] -> (x0_hat, eps_hat), both [B,H,W,C]."""
        raise NotImplementedError

    def target(self, x0, eps, alpha, sigma):
        """What the network is trained to predict, [B,H,W,C]."""
        raise NotImplementedError

    def error_scale(self, alpha, sigma):
        """||target_hat - target||^2 / ||eps_hat - eps||^2 at fixed x_t (a function of t): [B]."""
        raise NotImplementedError

    def network_output(self, apply_fn: Callable, x_t, t, schedule, r=None):
        """Calls the network as training and sampling both must: input c_in x_t, conditioned on
        c_noise(t). apply_fn: (network input [B,H,W,C], c_noise [B]) -> [B,H,W,C].
        x_t: [B,H,W,C]; t: [B] times; r: [B] end times, only for two-time models (None: r = t).
        Returns the network output [B,H,W,C] float32."""
        c_in = self.c_in(schedule.alpha(t), schedule.sigma(t))
        if r is None:
            c_noise = self.c_noise(schedule, t)
        elif self.num_noise_inputs == 2:
            c_noise = self.c_noise(schedule, t, r)
        else:
            raise ValueError(f"the {self.name!r} parameterization takes one time; an end time r "
                             f"needs a two-time model (mean_velocity)")
        return apply_fn(bcast(c_in, x_t) * x_t, c_noise).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Eps(Parameterization):
    name: ClassVar[str] = "eps"

    def c_skip_out(self, alpha, sigma):
        alpha, sigma = _f32(alpha, sigma)
        return 1.0 / alpha, -sigma / alpha

    def x0_eps(self, x_t, output, alpha, sigma):
        return x0_from_eps(x_t, output, alpha, sigma), output

    def target(self, x0, eps, alpha, sigma):
        return eps

    def error_scale(self, alpha, sigma):
        alpha, sigma = _f32(alpha, sigma)
        return jnp.ones_like(alpha)


@dataclasses.dataclass(frozen=True)
class X0(Parameterization):
    name: ClassVar[str] = "x0"

    def c_skip_out(self, alpha, sigma):
        alpha, sigma = _f32(alpha, sigma)
        return jnp.zeros_like(alpha * sigma), jnp.ones_like(alpha * sigma)

    def x0_eps(self, x_t, output, alpha, sigma):
        return output, eps_from_x0(x_t, output, alpha, sigma)

    def target(self, x0, eps, alpha, sigma):
        return x0

    def error_scale(self, alpha, sigma):
        """sigma^2 / alpha^2 = 1 / SNR."""
        alpha, sigma = _f32(alpha, sigma)
        return sigma**2 / alpha**2


@dataclasses.dataclass(frozen=True)
class V(Parameterization):
    name: ClassVar[str] = "v"

    def c_skip_out(self, alpha, sigma):
        alpha, sigma = _f32(alpha, sigma)
        norm = alpha**2 + sigma**2
        return alpha / norm, -sigma / norm

    def x0_eps(self, x_t, output, alpha, sigma):
        return x0_eps_from_v(x_t, output, alpha, sigma)

    def target(self, x0, eps, alpha, sigma):
        return v_from_x0_eps(x0, eps, alpha, sigma)

    def error_scale(self, alpha, sigma):
        """(alpha^2 + sigma^2)^2 / alpha^2."""
        alpha, sigma = _f32(alpha, sigma)
        return (alpha**2 + sigma**2) ** 2 / alpha**2


@dataclasses.dataclass(frozen=True)
class EDM(Parameterization):
    """Karras et al. 2022, Table 1, in VE-equivalent coordinates (see the module docstring)."""

    name: ClassVar[str] = "edm"

    def c_in(self, alpha, sigma):
        """c_in / alpha = 1 / sqrt(sigma^2 + alpha^2 sigma_data^2)."""
        alpha, sigma = _f32(alpha, sigma)
        return 1.0 / jnp.sqrt(sigma**2 + alpha**2 * self.sigma_data**2)

    def c_noise(self, schedule, t):
        """ln(s) / 4 at the VE-equivalent noise level s = sigma / alpha (Table 1's c_noise).
        t: [B] -> [B] float32."""
        alpha, sigma = _f32(schedule.alpha(t), schedule.sigma(t))
        return 0.25 * jnp.log(sigma / alpha)

    def c_skip_out(self, alpha, sigma):
        c_skip, c_out, _ = edm_preconditioning(alpha, sigma, self.sigma_data)
        return c_skip / jnp.asarray(alpha, jnp.float32), c_out

    def x0_eps(self, x_t, output, alpha, sigma):
        c_skip, c_out, _ = edm_preconditioning(alpha, sigma, self.sigma_data)
        x0 = bcast(c_skip, x_t) * x_t / bcast(alpha, x_t) + bcast(c_out, x_t) * output
        return x0, eps_from_x0(x_t, x0, alpha, sigma)

    def target(self, x0, eps, alpha, sigma):
        """F = (x0 - c_skip x_t / alpha) / c_out = (s x0 - sd^2 eps) / (sd sqrt(s^2 + sd^2))
        with s = sigma / alpha (no division by c_out)."""
        alpha, sigma = _f32(alpha, sigma)
        sigma_ve = bcast(sigma / alpha, x0)
        norm = jnp.sqrt(sigma_ve**2 + self.sigma_data**2)
        return (sigma_ve * x0 - self.sigma_data**2 * eps) / (self.sigma_data * norm)

    def error_scale(self, alpha, sigma):
        """(sigma/alpha)^2 / c_out^2 = 1 + 1 / (sigma_data^2 SNR)."""
        alpha, sigma = _f32(alpha, sigma)
        return 1.0 + sigma**2 / (alpha**2 * self.sigma_data**2)


@dataclasses.dataclass(frozen=True)
class Velocity(Parameterization):
    """The velocity v = a x0 + b eps with (a, b) = schedule.rates(alpha, sigma) = the time
    derivatives of (alpha, sigma). With det = alpha b - sigma a (1 on the linear interpolant):
    x0 = (b x_t - sigma v) / det, eps = (alpha v - a x_t) / det."""

    name: ClassVar[str] = "velocity"
    schedule: object = None

    def _rates(self, alpha, sigma):
        if self.schedule is None:
            raise ValueError("the velocity parameterization needs its schedule: "
                             "make_parameterization('velocity', schedule=...)")
        alpha, sigma = _f32(alpha, sigma)
        a, b = self.schedule.rates(alpha, sigma)
        return a, b, alpha * b - sigma * a

    def c_skip_out(self, alpha, sigma):
        _, b, det = self._rates(alpha, sigma)
        return b / det, -jnp.asarray(sigma, jnp.float32) / det

    def x0_eps(self, x_t, output, alpha, sigma):
        a, b, det = self._rates(alpha, sigma)
        x0 = (bcast(b, x_t) * x_t - bcast(sigma, x_t) * output) / bcast(det, x_t)
        eps = (bcast(alpha, x_t) * output - bcast(a, x_t) * x_t) / bcast(det, x_t)
        return x0, eps

    def target(self, x0, eps, alpha, sigma):
        a, b, _ = self._rates(alpha, sigma)
        return bcast(a, x0) * x0 + bcast(b, x0) * eps

    def error_scale(self, alpha, sigma):
        """det^2 / alpha^2 (1 / (1 - t)^2 on the linear interpolant)."""
        _, _, det = self._rates(alpha, sigma)
        return det**2 / jnp.asarray(alpha, jnp.float32) ** 2


@dataclasses.dataclass(frozen=True)
class Consistency(Parameterization):
    """A consistency model's boundary-condition parameterization (see the module docstring).
    x0_hat is the consistency function f(x_t, t); at t = 0 it is x_t exactly."""

    name: ClassVar[str] = "consistency"
    schedule: object = None

    @property
    def sigma_min(self) -> float:
        """The VE-equivalent level at t = 0, as float32 computes it (so s - s_min is exactly 0
        there)."""
        if self.schedule is None:
            raise ValueError("the consistency parameterization needs its schedule: "
                             "make_parameterization('consistency', schedule=...)")
        with jax.ensure_compile_time_eval():  # a constant, also while tracing
            t0 = jnp.zeros((), jnp.float32)
            return float(self.schedule.sigma(t0) / self.schedule.alpha(t0))

    def c_in(self, alpha, sigma):
        alpha, sigma = _f32(alpha, sigma)
        return 1.0 / jnp.sqrt(sigma**2 + alpha**2 * self.sigma_data**2)

    def c_noise(self, schedule, t):
        alpha, sigma = _f32(schedule.alpha(t), schedule.sigma(t))
        return 250.0 * jnp.log(sigma / alpha)

    def _skip_out_ve(self, alpha, sigma):
        alpha, sigma = _f32(alpha, sigma)
        return consistency.skip_out(sigma / alpha, self.sigma_min, self.sigma_data)

    def c_skip_out(self, alpha, sigma):
        c_skip, c_out = self._skip_out_ve(alpha, sigma)
        return c_skip / jnp.asarray(alpha, jnp.float32), c_out

    def x0_eps(self, x_t, output, alpha, sigma):
        c_skip, c_out = self._skip_out_ve(alpha, sigma)
        x0 = bcast(c_skip, x_t) * x_t / bcast(alpha, x_t) + bcast(c_out, x_t) * output
        return x0, eps_from_x0(x_t, x0, alpha, sigma)

    def target(self, x0, eps, alpha, sigma):
        """F = (x0 - c_skip x_t / alpha) / c_out, for denoising pre-training (not at s_min)."""
        c_skip, c_out = self._skip_out_ve(alpha, sigma)
        alpha, sigma = _f32(alpha, sigma)
        x_ve = x0 + bcast(sigma / alpha, x0) * eps
        return (x0 - bcast(c_skip, x0) * x_ve) / bcast(c_out, x0)

    def error_scale(self, alpha, sigma):
        """(sigma / alpha)^2 / c_out^2."""
        _, c_out = self._skip_out_ve(alpha, sigma)
        alpha, sigma = _f32(alpha, sigma)
        return (sigma / alpha) ** 2 / c_out**2


@dataclasses.dataclass(frozen=True)
class MeanVelocity(Velocity):
    """MeanFlow's average velocity u(x_t, r, t) (see the module docstring); at r = t, the
    velocity, with Velocity's converters."""

    name: ClassVar[str] = "mean_velocity"
    num_noise_inputs: ClassVar[int] = 2

    def c_noise(self, schedule, t, r=None):
        """(1000 t, 1000 (t - r)): a pair of [B] float32 (r = None: r = t, the velocity)."""
        if schedule.is_discrete:
            raise ValueError("the mean_velocity parameterization needs a continuous schedule")
        t = jnp.asarray(t, jnp.float32)
        r = t if r is None else jnp.broadcast_to(jnp.asarray(r, jnp.float32), t.shape)
        return 1000.0 * t, 1000.0 * (t - r)


@dataclasses.dataclass(frozen=True)
class LatentX0(X0):
    """x0 = G(x_t, z, t) of a GAN generator with a latent z [B, latent_dim] (see the module
    docstring); X0's converters."""

    name: ClassVar[str] = "x0_latent"
    num_noise_inputs: ClassVar[int] = 2
    latent_dim: int = 100  # DDGAN's nz

    def c_noise(self, schedule, t, r=None):
        """(X0's c_noise(t) [B], the latent z [B, latent_dim]); r: z (None: zeros)."""
        c = jnp.atleast_1d(super().c_noise(schedule, t))
        if r is None:
            return c, jnp.zeros((c.shape[0], self.latent_dim), jnp.float32)
        z = jnp.asarray(r, jnp.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"the x0_latent parameterization's latent must be [B, "
                             f"{self.latent_dim}], got {z.shape}")
        return c, z


for _cls in (Eps, X0, V, EDM, Velocity, Consistency, MeanVelocity, LatentX0):
    PARAMETERIZATIONS.register(_cls.name)(_cls)


def make_parameterization(name: str | Parameterization, sigma_data: float = 0.5,
                          schedule=None, latent_dim: int | None = None):
    """The parameterization registered as `name` (an object passes through); `schedule` is
    given to those that need it (velocity), `latent_dim` to those with a latent (x0_latent;
    None: its default)."""
    if isinstance(name, Parameterization):
        return name
    cls = PARAMETERIZATIONS.get(name).factory
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else ()
    kwargs = {"sigma_data": sigma_data}
    if "schedule" in fields:
        kwargs["schedule"] = schedule
    if "latent_dim" in fields and latent_dim is not None:
        kwargs["latent_dim"] = int(latent_dim)
    return cls(**kwargs)
