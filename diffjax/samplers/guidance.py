"""Guidance as denoiser wrappers: classifier-free guidance (Ho & Salimans 2022) and
autoguidance (Karras et al. 2024), both an extrapolation from a weaker denoiser towards a
stronger one, with an optional guidance interval over noise levels (Kynkaanniemi et al. 2024)."""

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


def extrapolate(strong: Callable, weak: Callable, guidance_scale: float, schedule=None,
                sigma_lo: float = 0.0, sigma_hi: float = math.inf, channels: int = 0) -> Callable:
    """Returns denoiser(x_t, t, r=None) = weak + w (strong - weak) of two denoisers
    (x_t [B,H,W,C], t [B], r=None) -> network output [B,H,W,C] of the same parameterization.
    The converters to x0 and eps are affine in the output at fixed (x_t, t), so this is the same
    combination of x0_hat, eps_hat and the score.

    w = 1 is the strong denoiser and w = 0 the weak one, everywhere (one network pass each).
    With an interval, guidance is applied only where sigma_lo < sigma(t) / alpha(t) <= sigma_hi
    (the VE-equivalent noise level, as in Kynkaanniemi et al. 2024, Sec. 3) and the strong
    denoiser is used elsewhere; the weak pass is skipped (lax.cond) when no example needs it.
    channels > 0 guides only the first `channels` output channels, the rest stay strong (the weak
    denoiser needs only those: e.g. a learned variance comes from the strong one alone)."""
    w = float(guidance_scale)
    if w == 1.0:
        return strong
    if w == 0.0:
        return weak
    interval = sigma_lo > 0.0 or sigma_hi < math.inf
    if interval and schedule is None:
        raise ValueError("a guidance interval needs the schedule to compute noise levels")

    def denoiser(x_t, t, r=None):
        out_strong = strong(x_t, t, r)

        def guided():
            out_weak = weak(x_t, t, r)
            if not channels:
                return out_weak + w * (out_strong - out_weak)
            head_weak, head_strong = out_weak[..., :channels], out_strong[..., :channels]
            head = head_weak + w * (head_strong - head_weak)
            return jnp.concatenate([head, out_strong[..., channels:]], -1)

        if not interval:
            return guided()
        sigma = schedule.sigma(t) / schedule.alpha(t)
        inside = (sigma > sigma_lo) & (sigma <= sigma_hi)
        inside_b = inside.reshape(inside.shape + (1,) * (x_t.ndim - 1))
        return jax.lax.cond(jnp.any(inside), lambda: jnp.where(inside_b, guided(), out_strong),
                            lambda: out_strong)

    return denoiser


def classifier_free(model_fn: ConditionalDenoiser, cond, null_cond, guidance_scale: float,
                    schedule=None, sigma_lo: float = 0.0, sigma_hi: float = math.inf,
                    channels: int = 0) -> Callable:
    """Returns denoiser(x_t, t, r=None) = uncond + w (cond - uncond) on the network output (r:
    a two-time model's end times), where cond uses `cond` and uncond `null_cond` (the
    conditioning plug-in's null condition, e.g. the null label): `extrapolate` with the
    conditional model as the strong denoiser and the unconditional one as the weak.

    w = 1 is the conditional model and w = 0 the unconditional one (one network pass each). The
    interval and `channels` are extrapolate's; channels: DiT's and SiT's released sampling code
    guides 3 of the 4 latent channels (forward_with_cfg)."""
    return extrapolate(lambda x_t, t, r=None: _call(model_fn, x_t, t, cond, r),
                       lambda x_t, t, r=None: _call(model_fn, x_t, t, null_cond, r),
                       guidance_scale, schedule, sigma_lo, sigma_hi, channels)


def autoguidance(model_fn: ConditionalDenoiser, guide_fn: ConditionalDenoiser, cond,
                 guidance_scale: float, schedule=None, sigma_lo: float = 0.0,
                 sigma_hi: float = math.inf, channels: int = 0) -> Callable:
    """Autoguidance (Karras et al. 2024, Sec. 3): D_w = D_0 + w (D_1 - D_0) with D_1 the main
    model and D_0 a guiding model, a worse version of it (smaller, or trained for less), both
    on the same condition `cond` (EDM2's autoguidance uses the conditional guide with the same
    label). model_fn, guide_fn: ConditionalDenoisers whose outputs are in the same
    parameterization (the Generator re-expresses a guide of another one). Returns
    denoiser(x_t, t, r=None); w = 1 is the main model alone (no guide pass), w = 0 the guide.
    The interval and `channels` are extrapolate's: outside the interval, the main model."""
    return extrapolate(lambda x_t, t, r=None: _call(model_fn, x_t, t, cond, r),
                       lambda x_t, t, r=None: _call(guide_fn, x_t, t, cond, r),
                       guidance_scale, schedule, sigma_lo, sigma_hi, channels)
