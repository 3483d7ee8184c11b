"""Data completion: RePaint (Lugmayr et al. 2022) over a Generator's denoiser, jitted and sharded
like sampling, in the codec's space (masks map through the codec)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import parallel, samplers, writers
from diffjax.codecs import to_uint8
from diffjax.samplers import repaint


def masked_view(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 images with their missing pixels shown mid-grey (128)."""
    return np.where(np.broadcast_to(mask > 0, images.shape), images, 128).astype(np.uint8)


def triplet_grid(original, masked, completed, pad: int = 2) -> np.ndarray:
    """One uint8 grid whose tiles are original | masked | completed side by side."""
    n, h, _, c = original.shape
    sep = np.full((n, h, pad, c), 255, np.uint8)
    tiles = np.concatenate([original, sep, masked, sep, completed], axis=2)
    return writers.image_grid(tiles, pad=3 * pad)


class Inpainter:
    """RePaint completion of [B, H, W, C] images under masks.

    generator: a Generator (its denoiser, grid, codec and mesh); inpaint: settings.InpaintOptions;
    ddpm: the ddpm sampler's options (RePaint's ancestral steps use its variance and
    temperature)."""

    def __init__(self, generator, inpaint, ddpm):
        self.gen, self.inpaint, self.ddpm = generator, inpaint, ddpm
        g = generator.grid
        self.ts = samplers.time_grid(generator.schedule, g.num_steps, g.spacing, rho=g.rho)
        self._fn = None
        levels = repaint.jump_schedule(len(self.ts), inpaint.jump_length, inpaint.resample)
        self.nfe = sum(b < a for a, b in zip(levels[:-1], levels[1:]))  # denoising steps

    def _compile(self):
        gen, codec = self.gen, self.gen.codec
        shard = parallel.batch_sharding(gen.mesh)

        def run(params, codec_params, key, images, masks, labels):
            k_noise, k_sample = jax.random.split(key)
            x_known = codec.encode(codec_params, images)
            x_mask = codec.encode_mask(masks)
            noise = jax.lax.with_sharding_constraint(
                jax.random.normal(k_noise, x_known.shape, jnp.float32), shard)
            cond = gen.conditioning.from_labels(labels)
            pred = samplers.Prediction(gen.denoiser(params, cond), gen.schedule,
                                       gen.parameterization, gen.clip)
            x, _ = repaint.repaint(pred, self.ts, noise, x_known, x_mask, k_sample,
                                   jump_length=self.inpaint.jump_length,
                                   resample=self.inpaint.resample,
                                   ddpm_variance=self.ddpm.variance,
                                   temperature=self.ddpm.temperature)
            return to_uint8(codec.decode(codec_params, x))

        repl = parallel.replicated(gen.mesh)
        return jax.jit(run, in_shardings=(None, repl, repl, shard, shard, shard),  # params: any
                       out_shardings=shard)

    def complete(self, params, images, masks, labels, key) -> np.ndarray:
        """images: global [B, H, W, C] float32 in [-1, 1], masks [B, H, W, 1] (1 = known),
        labels [B] (sharded on the batch axis). Returns the uint8 completions [B, H, W, C]."""
        if self._fn is None:
            self._fn = self._compile()
        return parallel.to_host(self._fn(params, self.gen.codec.params, key, images, masks,
                                         labels))
