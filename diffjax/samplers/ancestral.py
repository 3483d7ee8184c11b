"""DDPM ancestral sampling and DDIM, for any schedule (general alpha, sigma)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.options import check, choice
from diffjax.samplers.prediction import Prediction, posterior, step_coefficients
from diffjax.samplers.registry import SAMPLERS

DDPM_VARIANCES = ("small", "large")


@dataclasses.dataclass(frozen=True)
class DDPMOptions:
    """variance: 'small' (the posterior's) or 'large' (beta_t); temperature scales the noise."""

    variance: str = "small"
    temperature: float = 1.0

    def __post_init__(self):
        choice("variance", self.variance, DDPM_VARIANCES)
        check(self.temperature >= 0, "temperature", self.temperature, "must be >= 0")


@dataclasses.dataclass(frozen=True)
class DDIMOptions:
    """eta: DDIM's noise (0 deterministic, 1 = ddpm 'small'); temperature scales the noise."""

    eta: float = 0.0
    temperature: float = 1.0

    def __post_init__(self):
        check(self.eta >= 0, "eta", self.eta, "must be >= 0")
        check(self.temperature >= 0, "temperature", self.temperature, "must be >= 0")



def _scan(pred: Prediction, ts, x, rng, update):
    """Runs update(x, x0, eps, coefficients, z) over the grid in one lax.scan; NFE = len(ts)."""
    coefs = step_coefficients(pred.schedule, ts)

    def step(x, inputs):
        t, a_t, s_t, a_s, s_s, key = inputs
        x0, eps = pred.x0_eps(x, t)
        z = jax.random.normal(key, x.shape, jnp.float32)
        return update(x, x0, eps, (a_t, s_t, a_s, s_s), z), None

    keys = jax.random.split(rng, len(ts))
    x, _ = jax.lax.scan(step, x, (jnp.asarray(ts), *coefs, keys))
    return x, len(ts)


@SAMPLERS.register("ddpm", options=DDPMOptions)
def ddpm(pred: Prediction, ts, x, rng, opts: DDPMOptions):
    """Ancestral sampling from q(x_s | x_t, x0_hat) (Ho et al. 2020, Alg. 2) with the 'small'
    (posterior) or 'large' (beta_t) variance; the last step returns the mean, x0_hat."""

    def update(x, x0, eps, coefs, z):
        a_t, s_t, a_s, s_s = coefs
        c_xt, c_x0, var_small, var_large = posterior(a_t, s_t, a_s, s_s)
        var = var_small if opts.variance == "small" else var_large
        var = jnp.where(s_s > 0, var, 0.0)
        return c_xt * x + c_x0 * x0 + jnp.sqrt(var) * opts.temperature * z

    return _scan(pred, ts, x, rng, update)


@SAMPLERS.register("ddim", options=DDIMOptions)
def ddim(pred: Prediction, ts, x, rng, opts: DDIMOptions):
    """DDIM (Song et al. 2021, eq. 12): x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat
    + temperature c z with c = eta sqrt(posterior variance); eta = 1 equals ddpm 'small'."""

    def update(x, x0, eps, coefs, z):
        a_t, s_t, a_s, s_s = coefs
        c = opts.eta * jnp.sqrt(posterior(a_t, s_t, a_s, s_s)[2])
        return a_s * x0 + jnp.sqrt(jnp.maximum(s_s**2 - c**2, 0.0)) * eps + opts.temperature * c * z

    return _scan(pred, ts, x, rng, update)
