"""Data completion (inpainting) by replacement with RePaint resampling (Lugmayr et al. 2022).

After every denoising step to noise level s, the known pixels are replaced by a fresh forward
sample alpha_s x0 + sigma_s z of the given image, so the last step (alpha = 1, sigma = 0) returns
the known pixels exactly. RePaint's resampling jumps back `jump_length` levels with the forward
process q(x_t | x_s) and denoises them again, `resample` times at every jump point, which lets the
generated region harmonise with the known one. resample = 1 is plain replacement (Song et al. 2021,
App. I.2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.errors import ConfigError
from diffjax.samplers.prediction import Prediction, initial_x, posterior

MASKS = ("center_box", "left_half", "random_pixels")


def make_masks(kind: str, shape, fraction: float = 0.25, seed=0) -> np.ndarray:
    """Known-pixel masks [B, H, W, 1] float32: 1 = known, 0 = missing, for images of shape
    [B, H, W, C] (the same mask for every channel).

    center_box: a centred box of sides round(sqrt(fraction) H) x round(sqrt(fraction) W) is missing;
    left_half: the left floor(W / 2) columns are missing (fraction is not used);
    random_pixels: each pixel is missing independently with probability `fraction`, drawn from
    np.random.default_rng(seed) (an int or a sequence of ints)."""
    if kind not in MASKS:
        raise ConfigError(f"config.inpaint.mask={kind!r} is unknown; allowed: {', '.join(MASKS)}")
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"config.inpaint.mask_fraction={fraction!r} is invalid: must be in "
                          f"(0, 1)")
    batch, height, width = shape[0], shape[1], shape[2]
    mask = np.ones((batch, height, width, 1), np.float32)
    if kind == "center_box":
        bh, bw = (max(1, round(np.sqrt(fraction) * n)) for n in (height, width))
        top, left = (height - bh) // 2, (width - bw) // 2
        mask[:, top:top + bh, left:left + bw] = 0.0
    elif kind == "left_half":
        mask[:, :, : width // 2] = 0.0
    else:
        rng = np.random.default_rng(seed)
        mask[rng.random(mask.shape) < fraction] = 0.0
    return mask


def jump_schedule(num_steps: int, jump_length: int = 10, resample: int = 10) -> list[int]:
    """RePaint's time sequence (Lugmayr et al. 2022, Sec. 4.2; get_schedule_jump of their code, one
    sample per level): levels K-1 (the first grid time) ... 0 (the last) and -1 (clean data).
    Going down is a denoising step, going up one level a forward-noising step. At every level
    j = 0, L, 2L, ... < K - L the walk jumps back up L levels, `resample - 1` times."""
    if jump_length < 1 or resample < 1:
        raise ConfigError(f"config.inpaint.jump_length={jump_length} and config.inpaint.resample="
                         f"{resample} must both be >= 1")
    jumps = {j: resample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    level, levels = num_steps, []
    while level >= 1:
        level -= 1
        levels.append(level)
        if jumps.get(level, 0) > 0:
            jumps[level] -= 1
            for _ in range(jump_length):
                level += 1
                levels.append(level)
    levels.append(-1)
    return levels


def repaint(pred: Prediction, ts, noise, x0_known, mask, rng, *, jump_length: int = 10,
            resample: int = 10, ddpm_variance: str = "small", temperature: float = 1.0):
    """Completes x0_known [B,H,W,C] where mask [B,H,W,1 or C] is 0, starting from standard normal
    `noise` at time ts[0]; ts is the decreasing time grid (grids.time_grid). Unknown pixels follow
    ancestral steps q(x_s | x_t, x0_hat) ('small' or 'large' variance, noise x temperature).
    Returns (x0 [B,H,W,C] float32, NFE), NFE = K + (resample - 1) jump_length (#jump points)."""
    schedule = pred.schedule
    levels = jump_schedule(len(ts), jump_length, resample)
    time_of = lambda level: 0.0 if level < 0 else float(ts[len(ts) - 1 - level])  # noqa: E731
    src = np.array([time_of(a) for a in levels[:-1]], np.float32)
    dst = np.array([time_of(b) for b in levels[1:]], np.float32)
    denoise = np.array([b < a for a, b in zip(levels[:-1], levels[1:])])
    clean = np.array([b < 0 for b in levels[1:]])
    with jax.ensure_compile_time_eval():
        a_src, s_src = schedule.alpha(src), schedule.sigma(src)
        a_dst = jnp.where(clean, 1.0, schedule.alpha(dst))
        s_dst = jnp.where(clean, 0.0, schedule.sigma(dst))
    mask = jnp.asarray(mask, jnp.float32)

    def step(x, inputs):
        t, a_f, s_f, a_t, s_t, is_denoise, key = inputs
        k_unknown, k_known = jax.random.split(key)

        def denoise_step(x):
            x0, _ = pred.x0_eps(x, t)
            c_xt, c_x0, var_small, var_large = posterior(a_f, s_f, a_t, s_t)
            var = jnp.where(s_t > 0, var_small if ddpm_variance == "small" else var_large, 0.0)
            z = jax.random.normal(k_unknown, x.shape, jnp.float32)
            unknown = c_xt * x + c_x0 * x0 + jnp.sqrt(var) * temperature * z
            known = a_t * x0_known + s_t * jax.random.normal(k_known, x.shape, jnp.float32)
            return mask * known + (1.0 - mask) * unknown

        def renoise_step(x):  # q(x_t | x_s) one level up
            ratio = a_t / a_f
            std = jnp.sqrt(jnp.maximum(s_t**2 - ratio**2 * s_f**2, 0.0))
            return ratio * x + std * jax.random.normal(k_unknown, x.shape, jnp.float32)

        return jax.lax.cond(is_denoise, denoise_step, renoise_step, x), None

    keys = jax.random.split(rng, len(src))
    x = initial_x(schedule, noise, ts[0])
    x, _ = jax.lax.scan(step, x, (jnp.asarray(src), a_src, s_src, a_dst, s_dst,
                                  jnp.asarray(denoise), keys))
    return x, int(denoise.sum())
