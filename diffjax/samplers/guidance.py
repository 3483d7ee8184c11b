"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper, with an optional
guidance interval over noise levels (Kynkaanniemi et al. 2024)."""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

# A conditional denoiser: (x_t [B,H,W,C], t [B], cond[, r=]) -> network output, where cond is the
# conditioning plug-in's pytree of per-example arrays (e.g. {'label': [B] int32}); r: a two-input
# model's second input (mean_velocity's end times [B], x0_latent's latent [B, D]), passed only
# when a sampler gives it.
ConditionalDenoiser = Callable


def _call(model_fn, x_t, t, cond, r):
    """model_fn(x_t, t, cond), with the end time r of a two-time model when given."""
    return model_fn(x_t, t, cond) if r is None else model_fn(x_t, t, cond, r=r)


def classifier_free(model_fn: ConditionalDenoiser, cond, null_cond, guidance_scale: float,
                    schedule=None, sigma_lo: float = 0.0, sigma_hi: float = math.inf,
                    channels: int = 0) -> Callable:
    """Returns denoiser(x_t, t, r=None) = uncond + w (cond - uncond) on the network output (r:
    a two-time model's end times), where cond uses `cond` and uncond `null_cond` (the
    conditioning plug-in's null condition, e.g. the null label).
    The converters to x0 and eps are affine in the output at fixed (x_t, t), so this is the same
    combination of x0_hat, eps_hat and the score.

    w = 1 is the conditional model and w = 0 the unconditional one (one network pass each). With
    an interval, guidance is applied only where sigma_lo < sigma(t) / alpha(t) <= sigma_hi (the
    VE-equivalent noise level, as in Kynkaanniemi et al. 2024, Sec. 3) and the conditional model
    is used elsewhere; the unconditional pass is skipped (lax.cond) when no example needs it.
    channels > 0 guides only the first `channels` output channels, the rest stay conditional:
    DiT's and SiT's released sampling code guides 3 of the 4 latent channels (forward_with_cfg)."""
    w = float(guidance_scale)
    if w == 1.0:
        return lambda x_t, t, r=None: _call(model_fn, x_t, t, cond, r)
    if w == 0.0:
        return lambda x_t, t, r=None: _call(model_fn, x_t, t, null_cond, r)
    interval = sigma_lo > 0.0 or sigma_hi < math.inf
    if interval and schedule is None:
        raise ValueError("a guidance interval needs the schedule to compute noise levels")

    def denoiser(x_t, t, r=None):
        conditional = _call(model_fn, x_t, t, cond, r)

        def guided():
            unconditional = _call(model_fn, x_t, t, null_cond, r)
            out = unconditional + w * (conditional - unconditional)
            if channels:
                out = jnp.concatenate([out[..., :channels], conditional[..., channels:]], -1)
            return out

        if not interval:
            return guided()
        sigma = schedule.sigma(t) / schedule.alpha(t)
        inside = (sigma > sigma_lo) & (sigma <= sigma_hi)
        inside_b = inside.reshape(inside.shape + (1,) * (x_t.ndim - 1))
        return jax.lax.cond(jnp.any(inside), lambda: jnp.where(inside_b, guided(), conditional),
                            lambda: conditional)

    return denoiser
