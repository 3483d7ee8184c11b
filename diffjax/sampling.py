"""Samplers as pure functions of a denoiser, a schedule and a parameterization.

A denoiser is `denoiser(x_t: [B,H,W,C], t: [B]) -> network output` in the given parameterization
(class labels and params are closed over). Samplers never see a Flax module, so they can be tested
with analytic denoisers. Each sampler walks a decreasing time grid t_0 > ... > t_{K-1} and a final
step to clean data (alpha = 1, sigma = 0), evaluating the network once per step (NFE = K).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import losses

SAMPLERS = ("ddpm", "ddim")
SPACINGS = ("uniform", "leading", "trailing", "quadratic")
DDPM_VARIANCES = ("small", "large")


def time_grid(schedule, num_steps: int, spacing: str = "uniform", t_min: float = 1e-3) -> np.ndarray:
    """Decreasing sampling times [num_steps] float32.

    Discrete schedules pick step indices (DDIM, Song et al. 2021; Lin et al. 2024 for trailing):
      uniform: round(linspace(0, T-1, K));  leading: arange(K) * (T // K);
      trailing: round(arange(T, 0, -T/K)) - 1;  quadratic: linspace(0, sqrt(0.8 T), K)^2.
    Continuous schedules: uniform/leading/trailing: linspace(1, t_min, K); quadratic: t_min +
    (1 - t_min) * linspace(1, 0, K)^2 (dense near the data).
    """
    if spacing not in SPACINGS:
        raise ValueError(f"config.sampling.spacing={spacing!r} is unknown; allowed: {', '.join(SPACINGS)}")
    if num_steps < 1:
        raise ValueError(f"config.sampling.num_steps={num_steps} must be >= 1")
    if schedule.is_discrete:
        T = schedule.num_timesteps
        if num_steps > T:
            raise ValueError(f"config.sampling.num_steps={num_steps} exceeds the schedule's {T} steps")
        if spacing == "uniform":
            index = np.round(np.linspace(0, T - 1, num_steps))
        elif spacing == "leading":
            index = np.arange(num_steps) * (T // num_steps)
        elif spacing == "trailing":
            index = np.round(np.arange(T, 0, -T / num_steps))[:num_steps] - 1
        else:
            index = np.linspace(0, np.sqrt(0.8 * T), num_steps) ** 2
        index = np.unique(np.round(index).astype(np.int64))[::-1]
        if len(index) != num_steps:
            raise ValueError(f"spacing={spacing!r} gives repeated steps for num_steps={num_steps}")
        return ((index + 1.0) / T).astype(np.float32)
    if spacing == "quadratic":
        return (t_min + (1.0 - t_min) * np.linspace(1.0, 0.0, num_steps) ** 2).astype(np.float32)
    return np.linspace(1.0, t_min, num_steps).astype(np.float32)


def _step_coefficients(schedule, ts: np.ndarray):
    """(alpha_t, sigma_t, alpha_s, sigma_s) per step; the step after the last goes to clean data."""
    ts = jnp.asarray(ts)
    alpha_t, sigma_t = schedule.alpha(ts), schedule.sigma(ts)
    alpha_s = jnp.concatenate([alpha_t[1:], jnp.ones((1,))])
    sigma_s = jnp.concatenate([sigma_t[1:], jnp.zeros((1,))])
    return alpha_t, sigma_t, alpha_s, sigma_s


def _posterior(alpha_t, sigma_t, alpha_s, sigma_s):
    """q(x_s | x_t, x0) for s < t (Kingma et al. 2021, VDM eq. 26-28, general alpha/sigma):
    mean = c_xt x_t + c_x0 x0, and the variances 'small' (true posterior) and 'large' (sigma_{t|s}^2)."""
    alpha_ts = alpha_t / alpha_s
    sigma2_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2
    c_xt = alpha_ts * sigma_s**2 / sigma_t**2
    c_x0 = alpha_s * sigma2_ts / sigma_t**2
    return c_xt, c_x0, sigma2_ts * sigma_s**2 / sigma_t**2, sigma2_ts


def sample(denoiser: Callable, schedule, parameterization: str, noise, rng, *, sampler: str = "ddim",
           num_steps: int = 50, spacing: str = "uniform", eta: float = 0.0, temperature: float = 1.0,
           ddpm_variance: str = "small", clip_denoised: bool = True):
    """Draws samples starting from `noise` (x at the first grid time, before scaling).

    noise: [B, H, W, C] standard normal; it is scaled by sigma(t_0) (VE) or used as-is (VP, where
    sigma(t_0) ~ 1 and the marginal is ~N(0, 1)). Returns (x0 [B, H, W, C] float32, nfe).
    ddpm: ancestral sampling from the posterior q(x_s | x_t, x0_hat) with 'small' or 'large' variance.
    ddim: x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + temperature c z, with
          c = eta * sqrt(posterior variance) (Song et al. 2021, eq. 12); eta=1 equals ddpm 'small'.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"config.sampling.sampler={sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")
    if ddpm_variance not in DDPM_VARIANCES:
        raise ValueError(f"config.sampling.ddpm_variance={ddpm_variance!r} is unknown; allowed: "
                         f"{', '.join(DDPM_VARIANCES)}")
    ts = time_grid(schedule, num_steps, spacing)
    alpha_t, sigma_t, alpha_s, sigma_s = _step_coefficients(schedule, ts)
    x = noise * (sigma_t[0] if not schedule.variance_preserving else 1.0)
    batch = noise.shape[0]

    def step(x, inputs):
        t, a_t, s_t, a_s, s_s, key = inputs
        out = denoiser(x, jnp.full((batch,), t)).astype(jnp.float32)
        x0, eps = losses.x0_eps_from_output(parameterization, x, out, a_t, s_t)
        if clip_denoised:
            x0 = jnp.clip(x0, -1.0, 1.0)
            eps = (x - a_t * x0) / s_t
        c_xt, c_x0, var_small, var_large = _posterior(a_t, s_t, a_s, s_s)
        z = jax.random.normal(key, x.shape, jnp.float32)
        if sampler == "ddpm":
            var = var_small if ddpm_variance == "small" else var_large
            var = jnp.where(s_s > 0, var, 0.0)  # the last step returns the mean, x0_hat
            x_next = c_xt * x + c_x0 * x0 + jnp.sqrt(var) * temperature * z
        else:
            c = eta * jnp.sqrt(var_small)
            x_next = a_s * x0 + jnp.sqrt(jnp.maximum(s_s**2 - c**2, 0.0)) * eps + temperature * c * z
        return x_next, None

    keys = jax.random.split(rng, num_steps)
    x, _ = jax.lax.scan(step, x, (jnp.asarray(ts), alpha_t, sigma_t, alpha_s, sigma_s, keys))
    return x, num_steps


def to_uint8(x):
    """[-1, 1] float images -> uint8 [0, 255] (rounding, as DDPM's evaluation does)."""
    return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
