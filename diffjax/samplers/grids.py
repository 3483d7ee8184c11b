"""Sampling time grids: decreasing times t_0 > ... > t_{K-1} in (0, 1] for any schedule.

Every sampler walks such a grid and then takes one last step to clean data (alpha = 1, sigma = 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.errors import ConfigError

SPACINGS = ("uniform", "leading", "trailing", "quadratic", "karras")


def default_t_min(schedule) -> float:
    """The smallest grid time: 1/T (step index 0) for discrete schedules, 0 for VE/EDM (whose
    sigma(0) = sigma_min > 0), and 1e-3 for continuous VP ones (sigma(0) = 0; score_sde's eps);
    a schedule's own sampling_t_min where it sets one (flow interpolants: 1e-3)."""
    if getattr(schedule, "sampling_t_min", None) is not None:
        return schedule.sampling_t_min
    if schedule.is_discrete:
        return 1.0 / schedule.num_timesteps
    return 0.0 if not schedule.variance_preserving else 1e-3


def sigma_ve(schedule, t) -> np.ndarray:
    """VE-equivalent noise level sigma(t) / alpha(t) as float64 numpy (t: numpy array)."""
    with jax.ensure_compile_time_eval():
        t = jnp.asarray(t, jnp.float32)
        return np.asarray(schedule.sigma(t) / schedule.alpha(t), np.float64)


def t_from_sigma_ve(schedule, sigma):
    """Time with VE-equivalent noise level `sigma` (jnp; inverse of sigma_ve via log-SNR)."""
    return schedule.t_from_logsnr(-2.0 * jnp.log(jnp.asarray(sigma, jnp.float32)))


def karras_sigmas(sigma_max: float, sigma_min: float, num_steps: int, rho: float = 7.0):
    """EDM (Karras et al. 2022, eq. 5): sigma_i = (sigma_max^(1/rho) + i / (K - 1)
    (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i = 0..K-1. Returns [K] float64, decreasing."""
    if num_steps == 1:
        return np.array([sigma_max], np.float64)
    ramp = np.linspace(0.0, 1.0, num_steps)
    hi, lo = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def time_grid(schedule, num_steps: int, spacing: str = "uniform", t_min: float | None = None,
              rho: float = 7.0) -> np.ndarray:
    """Decreasing sampling times [num_steps] float32.

    Discrete schedules pick step indices (DDIM, Song et al. 2021; Lin et al. 2024, Table 2):
      uniform: round(linspace(0, T-1, K));  leading: arange(K) * (T // K);
      trailing: round(arange(T, 0, -T/K)) - 1;  quadratic: linspace(0, sqrt(0.8 T), K)^2.
    Continuous schedules, with t_min = default_t_min(schedule) and t_max = schedule.t_max (1, but
    below 1 for flow interpolants, whose alpha(1) = 0 makes sigma / alpha infinite there):
      uniform: linspace(t_max, t_min, K);  leading: the K lowest of K+1 uniform points (never
      t_max); trailing: the K highest (never t_min);
      quadratic: t_min + (t_max - t_min) linspace(1, 0, K)^2.
    karras (any schedule): the EDM rho grid between the VE-equivalent noise levels
      sigma(t_max) / alpha(t_max) and sigma(t_min) / alpha(t_min), mapped back to t through log-SNR
      (for discrete schedules the times fall between grid steps; the network sees a fractional
      step index, as k-diffusion does).
    """
    if spacing not in SPACINGS:
        raise ConfigError(f"config.sampling.spacing={spacing!r} is unknown; allowed: "
                         f"{', '.join(SPACINGS)}")
    if num_steps < 1:
        raise ConfigError(f"config.sampling.num_steps={num_steps} must be >= 1")
    t_min = default_t_min(schedule) if t_min is None else t_min
    if spacing == "karras":
        return _karras_times(schedule, num_steps, t_min, rho)
    if schedule.is_discrete:
        return _discrete_times(schedule.num_timesteps, num_steps, spacing)
    t_max = getattr(schedule, "t_max", 1.0)
    if spacing == "quadratic":
        ts = t_min + (t_max - t_min) * np.linspace(1.0, 0.0, num_steps) ** 2
    elif spacing == "uniform":
        ts = np.linspace(t_max, t_min, num_steps)
    else:
        points = np.linspace(t_min, t_max, num_steps + 1)
        ts = (points[:-1] if spacing == "leading" else points[1:])[::-1]
    return ts.astype(np.float32)


def _discrete_times(T: int, num_steps: int, spacing: str) -> np.ndarray:
    if num_steps > T:
        raise ConfigError(f"config.sampling.num_steps={num_steps} exceeds the schedule's {T} steps")
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
        raise ConfigError(f"config.sampling.spacing={spacing!r} gives repeated steps for "
                         f"num_steps={num_steps}; use fewer steps or another spacing")
    return ((index + 1.0) / T).astype(np.float32)


def _karras_times(schedule, num_steps: int, t_min: float, rho: float) -> np.ndarray:
    t_max = getattr(schedule, "t_max", 1.0)
    sigma_max, sigma_min = sigma_ve(schedule, np.array([t_max, t_min]))
    sigmas = karras_sigmas(float(sigma_max), float(sigma_min), num_steps, rho)
    with jax.ensure_compile_time_eval():
        ts = np.asarray(t_from_sigma_ve(schedule, sigmas), np.float64)
    ts = np.clip(ts, t_min, t_max)
    ts[0] = t_max
    if num_steps > 1:
        ts[-1] = t_min
    ts = ts.astype(np.float32)
    if np.any(np.diff(ts) >= 0):
        raise ConfigError(f"config.sampling.spacing='karras' with num_steps={num_steps} and "
                         f"rho={rho} gives repeated times on schedule {schedule.name!r}; "
                         f"use fewer steps")
    return ts
