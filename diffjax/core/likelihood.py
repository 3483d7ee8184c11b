"""Log-likelihood by the probability-flow ODE, and its units: bits/dim of 8-bit images.

The PF-ODE bound (Song et al. 2021, score_sde App. D.2; Chen et al. 2018, FFJORD): along
dy/ds = f(y, s) the log-density changes as d/ds log p_s(y(s)) = -div f, so
    log p_lo(y_lo) = log p_hi(y_hi) + int_{s_lo}^{s_hi} div f(y(s), s) ds,
integrated from the data end up to the prior. Here, as in the ode sampler, y = x_t / alpha(t)
(the VE-equivalent coordinates) and s = log(sigma / alpha), where the ODE of every schedule is
dy/ds = y - D(y; e^s) (Karras et al. 2022, eq. 1 in log sigma). div f = D_dims - div_y D is
estimated by Hutchinson's trace estimator E[v^T J v] (Rademacher or Gaussian v, held fixed along
one solve, as FFJORD and score_sde do) or computed exactly (D JVPs, small images only).

Units (score_sde's `bpd = -logp / D / ln 2 + 7` for data in [-1, 1]): an 8-bit image with pixel
levels k in {0..255}, dequantized as x = (k + u) / 128 - 1, u ~ U[0, 1)^D (score_sde's
(255 k' + u) / 256 in [0, 1], scaled to [-1, 1]), fills a cube of side w = 2/256 per level, so
-log2 P(k) <= E_u[-log2 p(x)] - D log2(w) and bits/dim = (-log p(x) - D log w) / (D ln 2),
i.e. -log2 p(x) / D + 7. A uniform density on [-1, 1]^D gives 1 + 7 = 8 bits/dim exactly.
Without dequantization the density is read at the training points x = k / 127.5 - 1 with their
bin width 2/255: a density, not a bound on the discrete likelihood.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

PROBES = ("rademacher", "gaussian", "exact")
DEQUANTIZATIONS = ("uniform", "none")
EXACT_MAX_DIMS = 3 * 32 * 32  # the exact trace costs D JVPs per function evaluation
UNIFORM_BIN_WIDTH = 2.0 / 256.0  # dequantized levels (k + u) / 128 - 1 tile [-1, 1)
GRID_BIN_WIDTH = 2.0 / 255.0  # the training points k / 127.5 - 1


# ---------------------------------------------------------------------------------------------
# Units.


def bits_per_dim(nll_nats, num_dims: int, bin_width: float):
    """-log2 of the probability of a bin of side bin_width (model-space units) per dimension,
    from the density's negative log-likelihood nll_nats [B] at a point in it:
    (nll - D log bin_width) / (D ln 2). [B]."""
    return (nll_nats - num_dims * math.log(bin_width)) / (num_dims * math.log(2.0))


def pixel_levels(images):
    """Pipeline images [B,H,W,C] float in [-1, 1] (k / 127.5 - 1) -> levels k, float32 0..255."""
    return jnp.clip(jnp.round((jnp.asarray(images, jnp.float32) + 1.0) * 127.5), 0.0, 255.0)


def dequantize(levels, rng, dequantization: str = "uniform"):
    """Levels k [B,H,W,C] (0..255) -> (x in the model's [-1, 1], bin width in x units).
    'uniform': x = (k + u) / 128 - 1, u ~ U[0, 1) from rng (score_sde); 'none': x = k / 127.5 - 1
    (the training points)."""
    levels = jnp.asarray(levels, jnp.float32)
    if dequantization == "uniform":
        u = jax.random.uniform(rng, levels.shape, jnp.float32)
        return (levels + u) / 128.0 - 1.0, UNIFORM_BIN_WIDTH
    if dequantization == "none":
        return levels / 127.5 - 1.0, GRID_BIN_WIDTH
    raise ValueError(f"dequantization={dequantization!r}; allowed: {', '.join(DEQUANTIZATIONS)}")


def image_bits_per_dim(levels, rng, dequantization: str, nll_fn: Callable):
    """Bits/dim of 8-bit images under a density on the model's space.

    levels: [B,H,W,C] pixel levels 0..255; nll_fn(x [B,H,W,C]) -> (-log p(x) in nats [B],
    anything). Returns (bits/dim [B], what nll_fn returned besides the nll)."""
    x, width = dequantize(levels, rng, dequantization)
    nll, aux = nll_fn(x)
    return bits_per_dim(nll, int(np.prod(levels.shape[1:])), width), aux


# ---------------------------------------------------------------------------------------------
# Divergence.


def draw_probes(rng, kind: str, num_probes: int, shape) -> jax.Array | None:
    """Hutchinson probes [K, *shape] float32: 'rademacher' (+-1), 'gaussian' (N(0, 1)); None for
    'exact'."""
    if kind == "exact":
        return None
    shape = (num_probes, *shape)
    if kind == "rademacher":
        return jax.random.rademacher(rng, shape, jnp.float32)
    if kind == "gaussian":
        return jax.random.normal(rng, shape, jnp.float32)
    raise ValueError(f"probe={kind!r}; allowed: {', '.join(PROBES)}")


def drift_and_divergence(fn: Callable, x, probes=None, chunk: int = 64):
    """fn(x) and its divergence per example, for fn: [B, ...] -> [B, ...] whose examples do not
    interact. probes [K, B, ...]: Hutchinson's mean_k v_k^T J v_k (unbiased); None: the exact
    trace sum_d e_d^T J e_d, by D JVPs (`chunk` at a time). Returns (fn(x), [B] float32)."""
    out, jvp = jax.linearize(fn, x)
    batch = x.shape[0]
    if probes is not None:
        products = jax.vmap(jvp)(probes) * probes
        return out, jnp.mean(jnp.sum(products.reshape(probes.shape[0], batch, -1), -1), 0)
    dims = int(np.prod(x.shape[1:]))

    def diagonal_entry(d):  # J[d, d] of every example at once: they do not interact
        basis = jnp.broadcast_to(jax.nn.one_hot(d, dims, dtype=x.dtype), (batch, dims))
        return jvp(basis.reshape(x.shape)).reshape(batch, dims)[:, d]

    diagonal = jax.lax.map(diagonal_entry, jnp.arange(dims), batch_size=min(chunk, dims))
    return out, jnp.sum(diagonal, axis=0)


# ---------------------------------------------------------------------------------------------
# The probability-flow ODE bound.


def gaussian_log_density(y, std):
    """log N(y; 0, std^2 I) per example: [B] (std: a scalar)."""
    y = y.reshape(y.shape[0], -1)
    dims = y.shape[1]
    return (-0.5 * jnp.sum(y**2, -1) / std**2 - dims * jnp.log(std)
            - 0.5 * dims * math.log(2.0 * math.pi))


def ode_log_likelihood(denoise_ve: Callable, x, *, alpha_lo: float, sigma_lo: float,
                       sigma_hi: float, prior_std: float, probes, solver, rtol: float,
                       atol: float, max_steps: int = 4096, initial_steps: int = 100):
    """log p(x) in nats of the PF-ODE model, x [B,H,W,C] at the lowest time t_lo.

    denoise_ve(y [B,H,W,C], sigma: a scalar VE level) -> x0_hat [B,H,W,C]. alpha_lo: alpha(t_lo)
    (y_lo = x / alpha_lo, log p_x = log p_y - D log alpha_lo); sigma_lo, sigma_hi: the VE levels
    of the two ends; prior_std: the prior's std of y at sigma_hi (x_T's std / alpha(t_hi)).
    probes: [K, B,H,W,C] held fixed along the solve, or None (exact divergence). solver: a
    diffrax solver, under a PID controller (rtol, atol; RMS norm over the batch and the integral).
    Returns (log p(x) [B], accepted + rejected steps, whether the solve succeeded)."""
    import diffrax

    def field(s, state, args):
        y, _ = state
        sigma = jnp.exp(s)
        drift, div = drift_and_divergence(lambda z: z - denoise_ve(z, sigma), y, probes)
        return drift, div

    s0, s1 = math.log(sigma_lo), math.log(sigma_hi)
    y0 = x / alpha_lo
    state0 = (y0, jnp.zeros((x.shape[0],), jnp.float32))
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(field), solver, t0=s0, t1=s1, dt0=(s1 - s0) / initial_steps, y0=state0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True), max_steps=max_steps, throw=False)
    y1, integral = solution.ys[0][0], solution.ys[1][0]
    dims = int(np.prod(x.shape[1:]))
    log_p = gaussian_log_density(y1, prior_std) + integral - dims * math.log(alpha_lo)
    ok = solution.result == diffrax.RESULTS.successful
    return log_p, solution.stats["num_steps"], ok
