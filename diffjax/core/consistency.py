"""Consistency-model math (Song et al. 2023, "Consistency Models"; Song & Dhariwal 2023,
"Improved Techniques for Training Consistency Models", iCT): the boundary-condition
parameterization, the pseudo-Huber metric, iCT's discretisation curriculum N(k) and its
lognormal distribution over the discretisation's noise-level pairs, and the noise levels of
multistep consistency sampling. Noise levels are VE-equivalent (s = sigma / alpha)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# CM/iCT's two-step intermediate level for CIFAR-10 (Song et al. 2023, Sec. 6; iCT, Sec. 6).
TWO_STEP_SIGMA = 0.821


def skip_out(sigma, sigma_min: float, sigma_data: float = 0.5):
    """CM's c_skip = sd^2 / ((s - s_min)^2 + sd^2), c_out = sd (s - s_min) / sqrt(sd^2 + s^2)
    (Song et al. 2023, App. C). At s = s_min they are exactly (1, 0): f(x, s_min) = x.
    sigma: [B] or scalar. Returns (c_skip, c_out) of sigma's shape, float32."""
    sigma = jnp.asarray(sigma, jnp.float32)
    offset = sigma - sigma_min
    c_skip = sigma_data**2 / (offset**2 + sigma_data**2)
    c_out = sigma_data * offset / jnp.sqrt(sigma_data**2 + sigma**2)
    return c_skip, c_out


def pseudo_huber(x, y, c):
    """d(x, y) = sqrt(||x - y||^2 + c^2) - c per example (iCT, eq. 9). x, y: [B, ...]; c: a
    scalar > 0. Returns [B] float32."""
    diff = (jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)).reshape(x.shape[0], -1)
    return jnp.sqrt(jnp.sum(diff**2, axis=1) + c**2) - c


def pseudo_huber_c(dim: int) -> float:
    """iCT's c = 0.00054 sqrt(d) for data of d dimensions (0.03 on CIFAR-10's 3,072)."""
    return 0.00054 * math.sqrt(dim)


def num_scales(step, total_steps: int, s0: int = 10, s1: int = 1280):
    """iCT's discretisation curriculum (eq. 8): N(k) = min(s0 2^floor(k / K'), s1) + 1 with
    K' = floor(K / (log2 floor(s1 / s0) + 1)). step: int or traced int32. Returns int32."""
    k_prime = max(math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1)), 1)
    doublings = jnp.asarray(step, jnp.int32) // k_prime
    n = jnp.minimum(s0 * 2.0 ** jnp.minimum(doublings, 30).astype(jnp.float32), s1)
    return n.astype(jnp.int32) + 1


def karras_levels(n, max_n: int, sigma_min: float, sigma_max: float, rho: float = 7.0):
    """The n-point EDM discretisation in increasing order, sigma_i = (s_min^(1/rho) + i / (n - 1)
    (s_max^(1/rho) - s_min^(1/rho)))^rho for i < n, padded to max_n entries (entries i >= n are
    sigma_max). n: int or traced int32 >= 2. Returns [max_n] float32."""
    i = jnp.arange(max_n, dtype=jnp.float32)
    frac = jnp.minimum(i / (jnp.asarray(n, jnp.float32) - 1.0), 1.0)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (lo + frac * (hi - lo)) ** rho


def lognormal_pair_logits(sigmas, n, p_mean: float = -1.1, p_std: float = 2.0):
    """Log-probabilities of picking the pair (sigma_i, sigma_{i+1}), i < n - 1 (iCT, eq. 10):
    p(i) proportional to erf((ln s_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((ln s_i - P_mean) /
    (sqrt 2 P_std)). sigmas: [M] from karras_levels. Returns [M - 1], -inf for i >= n - 1."""
    cdf = jax.scipy.special.erf((jnp.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
    mass = jnp.maximum(cdf[1:] - cdf[:-1], 0.0)
    valid = jnp.arange(sigmas.shape[0] - 1) < n - 1
    return jnp.where(valid & (mass > 0), jnp.log(jnp.where(mass > 0, mass, 1.0)), -jnp.inf)


def sampling_sigmas(num_steps: int, sigma_min: float, sigma_max: float,
                    rho: float = 7.0) -> np.ndarray:
    """The noise levels of multistep consistency sampling (Song et al. 2023, Alg. 1): sigma_max,
    then num_steps - 1 intermediate levels. Two steps use the papers' 0.821 (CIFAR-10); other
    counts the EDM rho grid of num_steps + 1 levels from sigma_max to sigma_min without its last
    point. Returns [num_steps] float64, decreasing."""
    if num_steps == 2:
        return np.array([sigma_max, TWO_STEP_SIGMA], np.float64)
    ramp = np.linspace(0.0, 1.0, num_steps + 1)[:-1]
    hi, lo = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


ODE_SOLVERS = ("euler", "heun")


def ode_step_ve(denoise, x, sigma, sigma_next, solver: str = "heun"):
    """One step of the probability-flow ODE dx/ds = (x - D(x; s)) / s (EDM, eq. 3 with
    sigma(t) = t) from level sigma to sigma_next > 0, in VE-equivalent coordinates: 'euler' (the
    DDIM step) or 'heun' (EDM's second order, CD's teacher solver). denoise(x, s) -> x0_hat;
    x: [B,H,W,C]; sigma, sigma_next: [B]. Returns [B,H,W,C]."""
    col = lambda v: jnp.reshape(v, (-1,) + (1,) * (x.ndim - 1))  # noqa: E731
    d = (x - denoise(x, sigma)) / col(sigma)
    x_next = x + col(sigma_next - sigma) * d
    if solver == "heun":
        d_next = (x_next - denoise(x_next, sigma_next)) / col(sigma_next)
        x_next = x + col(sigma_next - sigma) * 0.5 * (d + d_next)
    return x_next
