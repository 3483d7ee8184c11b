"""What every sampler shares: the network output turned into (x0_hat, eps_hat), the same in the
VE-equivalent coordinates of EDM, and the Gaussian posterior q(x_s | x_t, x0)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp

from diffjax.core.parameterizations import Parameterization, make_parameterization
from diffjax.core.schedules import posterior  # noqa: F401 (the samplers' import)

# A denoiser: (x_t [B, H, W, C], t [B] float32 times in [0, 1]) -> network output [B, H, W, C] in
# the model's parameterization. Class labels, guidance and params are closed over; see guidance.py.
# A two-input model's denoiser also takes its second input r: the end times [B] of a two-time
# model (mean_velocity), the latent z [B, D] of a GAN generator (x0_latent).
Denoiser = Callable


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Turns a denoiser into data predictions for any parameterization.

    denoiser: see `Denoiser`.  parameterization: a Parameterization or its registered name.
    clip: (lo, hi) bounds to clip x0_hat to, the codec's (pixels: (-1, 1)), with eps_hat then
    recomputed from it; None: no clipping (an unbounded space such as VAE latents)."""

    denoiser: Denoiser
    schedule: object
    parameterization: Parameterization | str
    clip: tuple[float, float] | None = None

    def __post_init__(self):
        object.__setattr__(self, "parameterization",
                           make_parameterization(self.parameterization,
                                                 schedule=self.schedule))

    def x0_eps(self, x, t, r=None):
        """x: [B, H, W, C] at time t (a scalar) -> (x0_hat, eps_hat), both [B, H, W, C] float32.
        r: a two-input model's second input (a GAN generator's latent z [B, D]; None: none)."""
        t = jnp.asarray(t, jnp.float32)
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        times = jnp.full((x.shape[0],), t)
        out = (self.denoiser(x, times) if r is None
               else self.denoiser(x, times, r=r)).astype(jnp.float32)
        x0, eps = self.parameterization.x0_eps(x, out, alpha, sigma)
        if self.clip is not None:
            x0 = jnp.clip(x0, *self.clip)
            eps = (x - alpha * x0) / sigma
        return x0, eps

    def average_velocity(self, x, t, r):
        """A two-time model's output at x [B,H,W,C], from time t to time r (scalars): MeanFlow's
        u(x, r, t), [B,H,W,C] float32."""
        full = lambda s: jnp.full((x.shape[0],), jnp.asarray(s, jnp.float32))  # noqa: E731
        return self.denoiser(x, full(t), r=full(r)).astype(jnp.float32)

    def denoise_ve(self, x_ve, t):
        """EDM's D(x_ve; sigma_ve(t)): x_ve = x_t / alpha(t), t a scalar. Returns x0_hat."""
        alpha = self.schedule.alpha(jnp.asarray(t, jnp.float32))
        return self.x0_eps(alpha * x_ve, t)[0]


def initial_x(schedule, noise, t0):
    """x at the first grid time t0 from standard normal noise: noise itself for VP schedules
    (the marginal is ~N(0, 1) there), sigma(t0) * noise for VE ones."""
    if schedule.variance_preserving:
        return noise
    return noise * schedule.sigma(jnp.asarray(t0, jnp.float32))


def step_coefficients(schedule, ts):
    """(alpha_t, sigma_t, alpha_s, sigma_s) per step [K] each; the step after the last goes to
    clean data (alpha = 1, sigma = 0)."""
    ts = jnp.asarray(ts)
    alpha_t, sigma_t = schedule.alpha(ts), schedule.sigma(ts)
    alpha_s = jnp.concatenate([alpha_t[1:], jnp.ones((1,))])
    sigma_s = jnp.concatenate([sigma_t[1:], jnp.zeros((1,))])
    return alpha_t, sigma_t, alpha_s, sigma_s
