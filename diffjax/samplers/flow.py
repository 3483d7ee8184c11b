"""Samplers of flow matching in its own time t (t = 1: noise): Euler and Heun steps of the ODE
dx/dt = v(x, t), and SiT's SDE (Ma et al. 2024, Sec. 3.3) with a diffusion coefficient w(t).

The velocity comes from any parameterization through the Prediction: v = alpha'(t) x0_hat +
sigma'(t) eps_hat, with (alpha', sigma') = schedule.rates. They work on every schedule, not only
on interpolants (on a VP schedule the ODE in t is the probability-flow ODE in that time)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.options import check, choice
from diffjax.samplers.prediction import Prediction
from diffjax.samplers.registry import SAMPLERS

DIFFUSION_FORMS = ("sigma", "constant", "linear", "sbdm", "decreasing", "increasing_decreasing")
LAST_STEPS = ("mean", "euler", "denoise")


def predict_velocity(pred: Prediction, x, t):
    """(x0_hat, eps_hat, v) at x, t (a scalar), with v(x, t) = alpha'(t) x0_hat +
    sigma'(t) eps_hat: [B, H, W, C] each."""
    t = jnp.asarray(t, jnp.float32)
    x0, eps = pred.x0_eps(x, t)
    rate_alpha, rate_sigma = pred.schedule.rates(pred.schedule.alpha(t), pred.schedule.sigma(t))
    return x0, eps, rate_alpha * x0 + rate_sigma * eps


def velocity(pred: Prediction, x, t):
    """v(x, t): [B, H, W, C]; t a scalar."""
    return predict_velocity(pred, x, t)[2]


def _with_end(ts, end: float = 0.0):
    """(t_i, t_{i+1}) float32 pairs of the grid followed by `end`: two [K] arrays."""
    ts = np.asarray(ts, np.float64)
    return jnp.asarray(ts, jnp.float32), jnp.asarray(np.append(ts[1:], end), jnp.float32)


def _ode(pred: Prediction, ts, x, heun: bool):
    t_cur, t_next = _with_end(ts)

    def step(x, times):
        t, tn = times
        v = velocity(pred, x, t)
        x_next = x + (tn - t) * v
        if heun:  # the trapezoidal correction; the last step (to t = 0) is Euler's, as in EDM
            x_next = x + (tn - t) * 0.5 * (v + velocity(pred, x_next, tn))
        return x_next, None

    x, _ = jax.lax.scan(step, x, (t_cur[:-1], t_next[:-1]))
    x = x + (t_next[-1] - t_cur[-1]) * velocity(pred, x, t_cur[-1])
    return x, (2 * len(ts) - 1 if heun else len(ts))


@SAMPLERS.register("flow_euler")
def flow_euler(pred: Prediction, ts, x, rng, opts):
    """Euler steps x <- x + (t_next - t) v(x, t) down the grid and to t = 0: K NFE."""
    del rng, opts
    return _ode(pred, ts, x, heun=False)


@SAMPLERS.register("flow_heun")
def flow_heun(pred: Prediction, ts, x, rng, opts):
    """Heun (trapezoidal) steps, Euler on the last step to t = 0: 2K - 1 NFE."""
    del rng, opts
    return _ode(pred, ts, x, heun=True)


@dataclasses.dataclass(frozen=True)
class FlowSDEOptions:
    """SiT's SDE sampler (transport.Sampler.sample_sde; its defaults): diffusion_form w(t) times
    diffusion_norm; the grid is rescaled to end at last_step_size, from where the last step
    ('mean': the drift without noise, SiT's 'Mean'; 'euler': the ODE step; 'denoise': x0_hat)
    goes to t = 0."""

    diffusion_form: str = "sigma"
    diffusion_norm: float = 1.0
    last_step: str = "mean"
    last_step_size: float = 0.04

    def __post_init__(self):
        choice("diffusion_form", self.diffusion_form, DIFFUSION_FORMS)
        choice("last_step", self.last_step, LAST_STEPS)
        check(self.diffusion_norm >= 0, "diffusion_norm", self.diffusion_norm, "must be >= 0")
        check(0 < self.last_step_size < 0.5, "last_step_size", self.last_step_size,
              "must be in (0, 0.5)")


def diffusion_coefficient(schedule, t, form: str, norm: float = 1.0):
    """SiT's w(t) (path.py compute_diffusion) in this time (t = 1: noise, SiT's 1 - t):
    sigma: norm sigma(t); constant: norm; linear: norm t; sbdm: norm (sigma sigma' - sigma^2
    alpha' / alpha) (the VP-SDE's); decreasing: (1 - norm cos(pi t))^2 / 4;
    increasing_decreasing: norm sin^2(pi t). t: scalar -> scalar float32."""
    t = jnp.asarray(t, jnp.float32)
    if form == "sigma":
        return norm * schedule.sigma(t)
    if form == "constant":
        return jnp.full_like(t, norm)
    if form == "linear":
        return norm * t
    if form == "sbdm":
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        rate_alpha, rate_sigma = schedule.rates(alpha, sigma)
        return norm * (sigma * rate_sigma - sigma**2 * rate_alpha / alpha)
    if form == "decreasing":
        return 0.25 * (1.0 - norm * jnp.cos(math.pi * t)) ** 2
    return norm * jnp.sin(math.pi * t) ** 2


@SAMPLERS.register("flow_sde", options=FlowSDEOptions)
def flow_sde(pred: Prediction, ts, x, rng, opts: FlowSDEOptions):
    """Euler-Maruyama of the reverse SDE dx = (-v + w s) dtau + sqrt(2 w) dW, tau = 1 - t,
    s = -eps_hat / sigma the score (marginals of the ODE for every w >= 0): K NFE."""
    schedule = pred.schedule
    ts = np.asarray(ts, np.float64)
    if len(ts) > 1:  # rescale [t_K-1, t_0] to [last_step_size, t_0], as SiT's grid ends there
        ts = opts.last_step_size + (ts - ts[-1]) * (ts[0] - opts.last_step_size) / (ts[0] - ts[-1])
    t_cur, t_next = _with_end(ts)
    keys = jax.random.split(rng, len(ts))

    def drift(x, t):
        x0, eps, v = predict_velocity(pred, x, t)
        w = diffusion_coefficient(schedule, t, opts.diffusion_form, opts.diffusion_norm)
        return -v - w * eps / schedule.sigma(t), v, x0, w

    def step(x, inputs):
        t, tn, key = inputs
        d_tau = t - tn
        f, _, _, w = drift(x, t)
        noise = jax.random.normal(key, x.shape, jnp.float32)
        return x + f * d_tau + jnp.sqrt(2.0 * w * d_tau) * noise, None

    x, _ = jax.lax.scan(step, x, (t_cur[:-1], t_next[:-1], keys[:-1]))
    f, v, x0, _ = drift(x, t_cur[-1])
    if opts.last_step == "denoise":
        return x0, len(ts)
    d_tau = t_cur[-1] - t_next[-1]
    return x + (f if opts.last_step == "mean" else -v) * d_tau, len(ts)
