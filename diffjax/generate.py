"""Sampling from trained params: the sampler loop jitted over the mesh, batch-sharded."""

from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import losses, parallel, sampling
from diffjax.sampling import guidance


def check_labels(config, num_classes: int) -> None:
    """Raises unless config.sampling's guidance and labels fit the model (num_classes: 0 for an
    unconditional model)."""
    s = config.sampling
    if not num_classes:
        if s.guidance_scale != 1.0:
            raise ValueError(f"config.sampling.guidance_scale={s.guidance_scale} needs a "
                             f"class-conditional model (config.model.class_conditional=True)")
        if len(s.labels):
            raise ValueError(f"config.sampling.labels={tuple(s.labels)} needs a class-conditional "
                             f"model (config.model.class_conditional=True)")
        return
    bad = [label for label in s.labels if not 0 <= int(label) < num_classes]
    if bad:
        raise ValueError(f"config.sampling.labels={tuple(s.labels)} is invalid: labels must be in "
                         f"[0, {num_classes}) for this dataset; got {bad}")
    if s.guidance_scale != 1.0 and config.model.class_dropout <= 0:
        logging.warning("config.sampling.guidance_scale=%s but config.model.class_dropout=0: the "
                        "null label of the unconditional model was never trained",
                        s.guidance_scale)


def mean_nfe(nfes: list[int]) -> float | int:
    """NFE per sample over batches: an int when every batch used the same (fixed-step samplers),
    else the mean (the adaptive ODE solver)."""
    nfes = [int(n) for n in nfes]
    return nfes[0] if len(set(nfes)) == 1 else float(np.mean(nfes))


class Generator:
    """Draws images from a model's params with config.sampling, sharded over all devices."""

    def __init__(self, model, schedule, config, mesh, image_shape, num_classes: int = 0):
        self.model, self.schedule, self.config, self.mesh = model, schedule, config, mesh
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes if config.model.class_conditional else 0
        check_labels(config, self.num_classes)
        self.options = sampling.SamplerOptions.from_config(config.sampling)
        n_dev = mesh.devices.size
        # Round the per-call batch up to a multiple of the device count.
        self.batch = max(n_dev, -(-config.sampling.batch_size // n_dev) * n_dev)
        self._fn = None
        self.last_nfe: float | int | None = None  # NFE per sample of the last sample()/iter_samples

    def model_fn(self, params):
        """The conditional denoiser (x_t [B,H,W,C], t [B], labels [B] or None) -> network output,
        through losses.network_output (the EDM input scaling shared with training).

        params: one param tree, or a tuple/list of them: a checkpoint ensemble, whose denoiser is
        the mean of the members' network outputs. Every converter to x0/eps is affine in the
        output at fixed (x_t, t), so this averages their x0 (and eps, score) predictions too."""
        param, sigma_data = self.config.diffusion.parameterization, self.config.diffusion.sigma_data
        members = tuple(params) if isinstance(params, (tuple, list)) else (params,)

        def model_fn(x_t, t, labels):
            outputs = []
            for member in members:
                apply = lambda x, c, p=member: self.model.apply(  # noqa: E731
                    {"params": p}, x, c, labels if self.num_classes else None, train=False)
                outputs.append(losses.network_output(apply, x_t, t, self.schedule, param,
                                                     sigma_data))
            return outputs[0] if len(outputs) == 1 else sum(outputs) / len(outputs)

        return model_fn

    def denoiser(self, params, labels):
        """The sampler's denoiser (x_t, t) -> output: the model with classifier-free guidance
        (config.sampling.guidance_scale and interval) on `labels` [B] for conditional models."""
        s = self.config.sampling
        model_fn = self.model_fn(params)
        if not self.num_classes:
            return lambda x_t, t: model_fn(x_t, t, None)
        return guidance.classifier_free(model_fn, labels, self.num_classes, s.guidance_scale,
                                        self.schedule, s.guidance_sigma_min, s.guidance_sigma_max)

    def _compile(self, image_shape):
        batch, schedule = self.batch, self.schedule
        dcfg = self.config.diffusion
        data_sharding = parallel.batch_sharding(self.mesh)

        def run(params, key, labels):
            k_noise, k_sample = jax.random.split(key)
            noise = jax.random.normal(k_noise, (batch, *image_shape), jnp.float32)
            noise = jax.lax.with_sharding_constraint(noise, data_sharding)
            x, nfe = sampling.sample(self.denoiser(params, labels), schedule, dcfg.parameterization,
                                     noise, k_sample, options=self.options,
                                     sigma_data=dcfg.sigma_data)
            return sampling.to_uint8(x), jnp.asarray(nfe, jnp.int32)

        repl = parallel.replicated(self.mesh)
        # params keep the layout they arrive in (replicated, or FSDP-sharded by training).
        return jax.jit(run, in_shardings=(None, repl, data_sharding),
                       out_shardings=(data_sharding, repl))

    def compile(self, params) -> float:
        """Compiles the sampling program ahead of time; returns the seconds it took."""
        start = time.perf_counter()
        if self._fn is None:
            fn = self._compile(self.image_shape)
            labels = jax.device_put(np.zeros(self.batch, np.int32),
                                    parallel.batch_sharding(self.mesh))
            self._fn = fn.lower(params, jax.random.PRNGKey(0), labels).compile()
        return time.perf_counter() - start

    @property
    def nfe(self) -> float | int | None:
        """Network evaluations per sample in the last call (each is two network passes where
        classifier-free guidance is on)."""
        return self.last_nfe

    def labels_for(self, num_samples: int, seed: int = 0) -> np.ndarray:
        """[num_samples] int32 labels: config.sampling.labels cycled, or random ones from `seed`."""
        fixed = tuple(self.config.sampling.labels)
        if fixed:
            return np.resize(np.asarray(fixed, np.int32), num_samples)
        rng = np.random.default_rng(seed)
        return rng.integers(0, max(self.num_classes, 1), num_samples).astype(np.int32)

    def sample(self, params, num_samples: int, seed: int = 0, labels=None,
               progress: bool = False):
        """Returns (uint8 images [num_samples, H, W, C] numpy, NFE per sample).

        labels: [num_samples] int, or None for config.sampling.labels (or random labels).
        progress: show a tqdm bar of images done (process 0 only)."""
        out = list(self.iter_samples(params, num_samples, seed, labels, progress))
        return np.concatenate(out), self.nfe

    def iter_samples(self, params, num_samples: int, seed: int = 0, labels=None,
                     progress: bool = False):
        """Yields the images of `sample` batch by batch (uint8 [<= batch, H, W, C] numpy), so that
        large sample counts (e.g. 50k for FID) need not be held in memory at once. Batch i uses
        the key fold_in(PRNGKey(seed), i), so samples are reproducible from the seed."""
        from tqdm import tqdm

        self.compile(params)
        labels = self.labels_for(num_samples, seed) if labels is None else labels
        labels = np.asarray(labels, np.int32)
        nfes = []
        bar = tqdm(total=num_samples, unit="img", dynamic_ncols=True,
                   disable=not progress or jax.process_index() != 0)
        try:
            for i, start in enumerate(range(0, num_samples, self.batch)):
                chunk = labels[start:start + self.batch]
                chunk = np.pad(chunk, (0, self.batch - len(chunk)))
                key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
                images, nfe = self._fn(params, key,
                                       jax.device_put(chunk, parallel.batch_sharding(self.mesh)))
                if int(nfe) < 0:
                    raise RuntimeError(
                        f"config.sampling.sampler='ode': the {self.options.ode_solver} solver did "
                        f"not reach sigma_min within {sampling.ode.MAX_STEPS} steps; loosen "
                        f"config.sampling.ode_rtol={self.options.ode_rtol} / ode_atol="
                        f"{self.options.ode_atol}")
                nfes.append(int(nfe))
                self.last_nfe = mean_nfe(nfes)
                images = parallel.to_host(images)[:num_samples - start]
                bar.update(len(images))
                bar.set_postfix(nfe=self.last_nfe)
                yield images
        finally:
            bar.close()
