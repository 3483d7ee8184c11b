"""Predictor-corrector sampling (Song et al. 2021, score_sde, Alg. 2-5): at each grid time,
`corrector_steps` Langevin MCMC steps on p_t, then one ancestral (reverse-diffusion) predictor
step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.options import check
from diffjax.samplers.prediction import Prediction, posterior, step_coefficients
from diffjax.samplers.registry import SAMPLERS


@dataclasses.dataclass(frozen=True)
class PCOptions:
    """The Langevin corrector: its signal-to-noise ratio and steps per grid time (0: none)."""

    snr: float = 0.16
    corrector_steps: int = 1

    def __post_init__(self):
        check(self.snr > 0, "snr", self.snr, "must be > 0")
        check(self.corrector_steps >= 0, "corrector_steps", self.corrector_steps,
              "must be >= 0")


def langevin_alpha(schedule, ts) -> jnp.ndarray:
    """score_sde's alpha_i in the Langevin step size: 1 - beta_i for VP, 1 for VE, i.e.
    alpha(t)^2 / alpha(t - dt)^2 with dt = 1/T (discrete) or 1/1000 (continuous, score_sde's N)."""
    dt = 1.0 / schedule.num_timesteps if schedule.is_discrete else 1e-3
    ts = jnp.asarray(ts, jnp.float32)
    return (schedule.alpha(ts) / schedule.alpha(jnp.maximum(ts - dt, 0.0))) ** 2


def _mean_norm(x):
    """Batch mean of the per-example L2 norms (score_sde's LangevinCorrector): a scalar."""
    return jnp.mean(jnp.sqrt(jnp.sum(x**2, axis=tuple(range(1, x.ndim)))))


@SAMPLERS.register("pc", options=PCOptions)
def pc(pred: Prediction, ts, x, rng, opts: PCOptions):
    """Langevin corrector (score_sde Alg. 5): step = 2 alpha_i (snr ||z|| / ||score||)^2,
    x += step * score + sqrt(2 step) z, score = -eps_hat / sigma_t, with ||.|| the batch mean of
    per-example norms as in score_sde (so the step is shared by the batch); then the
    ancestral predictor q(x_s | x_t, x0_hat) ('small' variance; the last step returns x0_hat).
    NFE = N (1 + corrector_steps)."""
    schedule = pred.schedule
    coefs = step_coefficients(schedule, ts)
    lang_alpha = langevin_alpha(schedule, ts)
    n_corr = opts.corrector_steps

    def corrector(i, x, t, s_t, a_lang, key):
        _, eps = pred.x0_eps(x, t)
        score = -eps / s_t
        z = jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32)
        step = 2.0 * a_lang * (opts.snr * _mean_norm(z) / _mean_norm(score)) ** 2
        return x + step * score + jnp.sqrt(2.0 * step) * z

    def step(x, inputs):
        t, a_t, s_t, a_s, s_s, a_lang, key = inputs
        k_corr, k_pred = jax.random.split(key)
        x = jax.lax.fori_loop(0, n_corr, lambda i, x: corrector(i, x, t, s_t, a_lang, k_corr), x)
        x0, _ = pred.x0_eps(x, t)
        c_xt, c_x0, var, _ = posterior(a_t, s_t, a_s, s_s)
        z = jax.random.normal(k_pred, x.shape, jnp.float32)
        return c_xt * x + c_x0 * x0 + jnp.sqrt(jnp.where(s_s > 0, var, 0.0)) * z, None

    keys = jax.random.split(rng, len(ts))
    x, _ = jax.lax.scan(step, x, (jnp.asarray(ts), *coefs, lang_alpha, keys))
    return x, int(len(ts) * (1 + n_corr))

