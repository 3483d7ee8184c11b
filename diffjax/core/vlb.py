"""The variational bound of a discrete-time DDPM (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021,
iDDPM Sec. 2) and iDDPM's learned reverse variances (eq. 15), as in openai/improved-diffusion's
gaussian_diffusion.py and losses.py.

With T steps, step index i in {0..T-1} (the paper's t = i + 1) and a_i = alpha_bar_i:
  L_T     = KL(q(x_T | x_0) || N(0, I))                                  (the prior)
  L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),  t = 2..T      (index i >= 1)
  L_0     = -log p(x_0 | x_1)                                            (the decoder, i = 0)
-log p(x_0) <= L_T + sum_t L_{t-1} + L_0. p(x_{t-1} | x_t) = N(mu(x_t, x0_hat), Sigma) with mu
the posterior mean at the model's x0_hat and Sigma fixed ('small': the posterior variance
beta_tilde, 'large': beta) or learned: log Sigma = f log beta + (1 - f) log beta_tilde,
f = (v + 1) / 2 for the network's v in [-1, 1] (eq. 15 with improved-diffusion's LEARNED_RANGE).
beta_tilde at i = 0 is 0; improved-diffusion clips its log to beta_tilde_1's (also 'large''s
first entry). The decoder is the discretized Gaussian of 8-bit data in [-1, 1] (bin width
2/255, the end bins open), or for continuous data a Gaussian density.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core.parameterizations import bcast

VARIANCES = ("small", "large", "learned")
DECODERS = ("discretized", "gaussian")


@dataclasses.dataclass(frozen=True)
class PosteriorTables:
    """improved-diffusion's float64 tables of a beta schedule, each [T] numpy."""

    betas: np.ndarray
    alpha_bar: np.ndarray
    alpha_bar_prev: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    coef_x0: np.ndarray  # posterior mean = coef_x0 x_0 + coef_xt x_t
    coef_xt: np.ndarray

    @classmethod
    def from_betas(cls, betas) -> PosteriorTables:
        betas = np.asarray(betas, np.float64)
        alpha_bar = np.cumprod(1.0 - betas)
        prev = np.append(1.0, alpha_bar[:-1])
        variance = betas * (1.0 - prev) / (1.0 - alpha_bar)
        clipped = np.log(np.append(variance[1], variance[1:])) if len(betas) > 1 else np.log(betas)
        return cls(betas, alpha_bar, prev, variance, clipped,
                   betas * np.sqrt(prev) / (1.0 - alpha_bar),
                   (1.0 - prev) * np.sqrt(1.0 - betas) / (1.0 - alpha_bar))

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def log_variance(self, kind: str) -> np.ndarray:
        """The fixed log-variance table [T]: 'small' (log beta_tilde, clipped) or 'large'
        (log beta, its first entry beta_tilde_1 as improved-diffusion's FIXED_LARGE)."""
        if kind == "small":
            return self.posterior_log_variance_clipped
        if kind == "large":
            return np.log(np.append(self.posterior_variance[1], self.betas[1:]))
        raise ValueError(f"variance={kind!r}; fixed tables: small, large")

    def f32(self, name: str) -> jax.Array:
        return jnp.asarray(getattr(self, name), jnp.float32)


def learned_log_variance(v, min_log, max_log):
    """iDDPM eq. 15 (improved-diffusion LEARNED_RANGE): f = (v + 1) / 2,
    log Sigma = f max_log + (1 - f) min_log, with max_log = log beta_t and min_log = log
    beta_tilde_t (clipped). v: [B,H,W,C] in [-1, 1]; min_log, max_log: [B] or scalars."""
    frac = (v + 1.0) / 2.0
    return frac * bcast(max_log, v) + (1.0 - frac) * bcast(min_log, v)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise (improved-diffusion's)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """improved-diffusion's tanh approximation of the standard normal CDF."""
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(x) of 8-bit data x in [-1, 1] (levels k / 127.5 - 1) under N(means, e^(2 log_scales))
    integrated over each level's bin [x - 1/255, x + 1/255], the end bins open to -inf / +inf
    (improved-diffusion's, the same thresholds and clamps). Elementwise, nats."""
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    cdf_delta = cdf_plus - cdf_min
    return jnp.where(x < -0.999, log_cdf_plus,
                     jnp.where(x > 0.999, log_one_minus_cdf_min,
                               jnp.log(jnp.maximum(cdf_delta, 1e-12))))


def gaussian_log_likelihood(x, means, log_var):
    """log N(x; means, e^log_var) elementwise, nats."""
    return -0.5 * (math.log(2.0 * math.pi) + log_var + (x - means) ** 2 * jnp.exp(-log_var))


def _sum(values):
    return jnp.sum(values.reshape(values.shape[0], -1), axis=-1)


def prior_nats(x0, alpha_bar_last: float):
    """L_T = KL(q(x_T | x_0) || N(0, I)) per example: [B] nats."""
    mean = math.sqrt(alpha_bar_last) * x0
    log_var = jnp.full_like(x0, math.log(1.0 - alpha_bar_last))
    return _sum(normal_kl(mean, log_var, 0.0, 0.0))


def term_nats(tables: PosteriorTables, x0, x_t, index, x0_hat, log_var,
              decoder: str = "discretized"):
    """L_{i} per example [B], nats: the KL of the posterior to the model at index i >= 1, the
    decoder's -log p(x_0 | x_1) at i = 0. x0, x_t, x0_hat, log_var (the model's log-variance,
    [B,H,W,C] or broadcastable): [B,H,W,C]; index: [B] int32."""
    coef_x0, coef_xt = tables.f32("coef_x0")[index], tables.f32("coef_xt")[index]
    true_log_var = tables.f32("posterior_log_variance_clipped")[index]
    true_mean = bcast(coef_x0, x0) * x0 + bcast(coef_xt, x0) * x_t
    model_mean = bcast(coef_x0, x0) * x0_hat + bcast(coef_xt, x0) * x_t
    log_var = jnp.broadcast_to(log_var, x0.shape)
    kl = _sum(normal_kl(true_mean, bcast(true_log_var, x0), model_mean, log_var))
    if decoder == "discretized":
        log_p = discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * log_var)
    elif decoder == "gaussian":
        log_p = gaussian_log_likelihood(x0, model_mean, log_var)
    else:
        raise ValueError(f"decoder={decoder!r}; allowed: {', '.join(DECODERS)}")
    return jnp.where(index == 0, -_sum(log_p), kl)


def model_log_variance(tables: PosteriorTables, index, variance: str, v=None):
    """The model's log-variance at step index [B]: a fixed table's entry [B] ('small',
    'large'), or eq. 15 of the network's v [B,H,W,C] ('learned')."""
    if variance == "learned":
        if v is None:
            raise ValueError("variance='learned' needs the network's variance output v")
        return learned_log_variance(v, tables.f32("posterior_log_variance_clipped")[index],
                                    jnp.log(tables.f32("betas"))[index])
    table = jnp.asarray(tables.log_variance(variance), jnp.float32)
    return table[index].reshape(index.shape + (1, 1, 1))


def vlb_nats(model: Callable, x0, tables: PosteriorTables, rng, variance: str = "small",
             decoder: str = "discretized", log_variance=None) -> dict:
    """The whole bound of x0 [B,H,W,C], every one of the T terms at one draw
    x_t ~ q(x_t | x_0) each (improved-diffusion's calc_bpd_loop): T model calls in one scan.

    model(x_t [B,H,W,C], index [B] int32) -> (x0_hat [B,H,W,C], v [B,H,W,C] or None).
    variance: 'small' | 'large' | 'learned' (from v); log_variance: a [T] table overriding it.
    Returns {'total': [B], 'prior': [B], 'decoder': [B], 'terms': [T, B]} in nats."""
    batch = x0.shape[0]
    sqrt_ab = jnp.asarray(np.sqrt(tables.alpha_bar), jnp.float32)
    sqrt_1m_ab = jnp.asarray(np.sqrt(1.0 - tables.alpha_bar), jnp.float32)
    fixed = None if log_variance is None else jnp.asarray(log_variance, jnp.float32)

    def step(total, i):
        eps = jax.random.normal(jax.random.fold_in(rng, i), x0.shape, jnp.float32)
        x_t = sqrt_ab[i] * x0 + sqrt_1m_ab[i] * eps
        index = jnp.full((batch,), i, jnp.int32)
        x0_hat, v = model(x_t, index)
        log_var = (fixed[i] if fixed is not None
                   else model_log_variance(tables, index, variance, v))
        term = term_nats(tables, x0, x_t, index, x0_hat, log_var, decoder)
        return total + term, term

    total, terms = jax.lax.scan(step, jnp.zeros((batch,), jnp.float32),
                                jnp.arange(tables.num_timesteps))
    prior = prior_nats(x0, float(tables.alpha_bar[-1]))
    return {"total": total + prior, "prior": prior, "decoder": terms[0], "terms": terms}
