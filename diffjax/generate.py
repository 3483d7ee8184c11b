"""Sampling from trained params: the sampler loop jitted over the mesh, batch-sharded."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import parallel, sampling


class Generator:
    """Draws images from a model's params with config.sampling, sharded over all devices."""

    def __init__(self, model, schedule, config, mesh, image_shape, num_classes: int = 0):
        self.model, self.schedule, self.config, self.mesh = model, schedule, config, mesh
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes if config.model.class_conditional else 0
        scfg = config.sampling
        n_dev = mesh.devices.size
        # Round the per-call batch up to a multiple of the device count.
        self.batch = max(n_dev, -(-scfg.batch_size // n_dev) * n_dev)
        self._fn = None

    def _compile(self, image_shape):
        scfg = self.config.sampling
        batch, schedule, model = self.batch, self.schedule, self.model
        param = self.config.diffusion.parameterization
        data_sharding = parallel.batch_sharding(self.mesh)

        def run(params, key, labels):
            k_noise, k_sample = jax.random.split(key)
            noise = jax.random.normal(k_noise, (batch, *image_shape), jnp.float32)
            noise = jax.lax.with_sharding_constraint(noise, data_sharding)
            cond = labels if self.num_classes else None

            def denoiser(x_t, t):
                return model.apply({"params": params}, x_t, schedule.noise_cond(t), cond, train=False)

            x, _ = sampling.sample(
                denoiser, schedule, param, noise, k_sample, sampler=scfg.sampler,
                num_steps=scfg.num_steps, spacing=scfg.spacing, eta=scfg.eta,
                temperature=scfg.temperature, ddpm_variance=scfg.ddpm_variance,
                clip_denoised=scfg.clip_denoised)
            return sampling.to_uint8(x)

        repl = parallel.replicated(self.mesh)
        return jax.jit(run, in_shardings=(repl, repl, data_sharding), out_shardings=data_sharding)

    @property
    def nfe(self) -> int:
        """Network evaluations per sample."""
        return self.config.sampling.num_steps

    def sample(self, params, num_samples: int, seed: int = 0, labels=None):
        """Returns (uint8 images [num_samples, H, W, C] numpy, NFE per sample).

        labels: [num_samples] int, or None for random labels (class-conditional models only)."""
        if self._fn is None:
            self._fn = self._compile(self.image_shape)
        rng = np.random.default_rng(seed)
        if labels is None:
            labels = rng.integers(0, max(self.num_classes, 1), num_samples)
        labels = np.asarray(labels, np.int32)
        out = []
        for i, start in enumerate(range(0, num_samples, self.batch)):
            chunk = labels[start:start + self.batch]
            chunk = np.pad(chunk, (0, self.batch - len(chunk)))
            key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
            images = self._fn(params, key, jax.device_put(chunk, parallel.batch_sharding(self.mesh)))
            out.append(parallel.to_host(images))
        return np.concatenate(out)[:num_samples], self.nfe
