"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper, with an optional
guidance interval over noise levels (Kynkaanniemi et al. 2024)."""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

# A conditional denoiser: (x_t [B,H,W,C], t [B], labels [B] int32 or None) -> network output.
ConditionalDenoiser = Callable


def classifier_free(model_fn: ConditionalDenoiser, labels, null_label: int, guidance_scale: float,
                    schedule=None, sigma_lo: float = 0.0, sigma_hi: float = math.inf) -> Callable:
    """Returns denoiser(x_t, t) = uncond + w (cond - uncond) on the network output, where cond uses
    `labels` [B] and uncond the null label. The converters to x0 and eps are affine in the output at
    fixed (x_t, t), so this is the same combination of x0_hat, eps_hat and the score.

    w = 1 is the conditional model and w = 0 the unconditional one (one network pass each). With
    an interval, guidance is applied only where sigma_lo < sigma(t) / alpha(t) <= sigma_hi (the
    VE-equivalent noise level, as in Kynkaanniemi et al. 2024, Sec. 3) and the conditional model
    is used elsewhere; the unconditional pass is skipped (lax.cond) when no example needs it."""
    w = float(guidance_scale)
    null = jnp.full(jnp.shape(labels), null_label, jnp.int32)
    if w == 1.0:
        return lambda x_t, t: model_fn(x_t, t, labels)
    if w == 0.0:
        return lambda x_t, t: model_fn(x_t, t, null)
    interval = sigma_lo > 0.0 or sigma_hi < math.inf
    if interval and schedule is None:
        raise ValueError("a guidance interval needs the schedule to compute noise levels")

    def denoiser(x_t, t):
        cond = model_fn(x_t, t, labels)

        def guided():
            uncond = model_fn(x_t, t, null)
            return uncond + w * (cond - uncond)

        if not interval:
            return guided()
        sigma = schedule.sigma(t) / schedule.alpha(t)
        inside = (sigma > sigma_lo) & (sigma <= sigma_hi)
        inside_b = inside.reshape(inside.shape + (1,) * (x_t.ndim - 1))
        return jax.lax.cond(jnp.any(inside), lambda: jnp.where(inside_b, guided(), cond),
                            lambda: cond)

    return denoiser
