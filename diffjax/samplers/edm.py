"""The EDM sampler (Karras et al. 2022, Algorithm 2): Euler or Heun steps of the probability-flow
ODE dx/dsigma = (x - D(x; sigma)) / sigma in the VE-equivalent coordinates x / alpha, sigma / alpha
(which makes it valid for every schedule), with optional stochastic churn."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.options import check
from diffjax.samplers.grids import sigma_ve, t_from_sigma_ve
from diffjax.samplers.prediction import Prediction
from diffjax.samplers.registry import SAMPLERS


@dataclasses.dataclass(frozen=True)
class ChurnOptions:
    """EDM Algorithm 2's stochastic churn: s_churn (0: deterministic), applied where
    s_tmin <= sigma / alpha <= s_tmax, with noise scaled by s_noise."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0

    def __post_init__(self):
        check(self.s_churn >= 0, "s_churn", self.s_churn, "must be >= 0")
        check(0 <= self.s_tmin <= self.s_tmax, "s_tmin", self.s_tmin,
              f"need 0 <= s_tmin <= s_tmax (={self.s_tmax})")
        check(self.s_noise > 0, "s_noise", self.s_noise, "must be > 0")


def churn_levels(schedule, ts, opts):
    """Per step: gamma_i = min(S_churn / N, sqrt(2) - 1) where S_tmin <= sigma_i <= S_tmax, else 0
    (Algorithm 2, line 4); returns (sigma [N], sigma_hat = (1 + gamma) sigma [N], t_hat [N]) with
    t_hat the time of sigma_hat (= ts where gamma = 0)."""
    sigmas = sigma_ve(schedule, ts)
    in_range = (sigmas >= opts.s_tmin) & (sigmas <= opts.s_tmax)
    gamma = np.where(in_range, min(opts.s_churn / len(ts), np.sqrt(2.0) - 1.0), 0.0)
    sigma_hat = sigmas * (1.0 + gamma)
    with jax.ensure_compile_time_eval():
        t_churn = np.asarray(t_from_sigma_ve(schedule, sigma_hat), np.float64)
    t_hat = np.where(gamma > 0, t_churn, np.asarray(ts, np.float64))
    return sigmas, sigma_hat, t_hat


def _edm(pred: Prediction, ts, x, rng, opts, heun: bool):
    schedule = pred.schedule
    n = len(ts)
    sigmas, sigma_hat, t_hat = churn_levels(schedule, ts, opts)
    sigma_next = np.append(sigmas[1:], 0.0)
    t_next = np.append(np.asarray(ts, np.float64)[1:], 0.0)
    noise_std = opts.s_noise * np.sqrt(np.maximum(sigma_hat**2 - sigmas**2, 0.0))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    keys = jax.random.split(rng, n)

    def churn(x, std, key):  # Algorithm 2, lines 5-6
        return x + std * jax.random.normal(key, x.shape, jnp.float32)

    def step(x, inputs):
        th, sh, sn, tn, std, key = inputs
        x_hat = churn(x, std, key)
        d = (x_hat - pred.denoise_ve(x_hat, th)) / sh
        x_next = x_hat + (sn - sh) * d
        if heun:  # Algorithm 2, lines 9-11 (only steps with sigma_next > 0 are in this scan)
            d_next = (x_next - pred.denoise_ve(x_next, tn)) / sn
            x_next = x_hat + (sn - sh) * 0.5 * (d + d_next)
        return x_next, None

    x_ve = x / schedule.alpha(jnp.asarray(ts[0], jnp.float32))
    inputs = (f32(t_hat), f32(sigma_hat), f32(sigma_next), f32(t_next), f32(noise_std), keys)
    x_ve, _ = jax.lax.scan(step, x_ve, jax.tree.map(lambda a: a[:-1], inputs))
    # The last step goes to sigma = 0, where an Euler step returns D(x_hat) (Algorithm 2, line 8).
    x_hat = churn(x_ve, f32(noise_std[-1]), keys[-1])
    x0 = pred.denoise_ve(x_hat, f32(t_hat[-1]))
    return x0, (2 * n - 1 if heun else n)


@SAMPLERS.register("euler", options=ChurnOptions)
def euler(pred: Prediction, ts, x, rng, opts: ChurnOptions):
    """EDM Algorithm 2 with Euler steps only: N NFE for N grid times. With S_churn = 0 this is
    DDIM with eta = 0 (Karras et al. 2022, Sec. 3)."""
    return _edm(pred, ts, x, rng, opts, heun=False)


@SAMPLERS.register("heun", options=ChurnOptions)
def heun(pred: Prediction, ts, x, rng, opts: ChurnOptions):
    """EDM Algorithm 2 (Heun's 2nd-order correction except on the last step): 2N - 1 NFE."""
    return _edm(pred, ts, x, rng, opts, heun=True)
