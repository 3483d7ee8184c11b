"""Sampling from trained params: the sampler loop jitted over the mesh, batch-sharded, in the
codec's space x, decoded to images and converted to uint8."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import parallel, samplers
from diffjax.codecs import to_uint8
from diffjax.errors import ConfigError
from diffjax.progress import bar as progress_bar
from diffjax.samplers import guidance


def mean_nfe(nfes: list[int]) -> float | int:
    """NFE per sample over batches: an int when every batch used the same (fixed-step samplers),
    else the mean (the adaptive ODE solver)."""
    nfes = [int(n) for n in nfes]
    return nfes[0] if len(set(nfes)) == 1 else float(np.mean(nfes))


def _failed_solve(sampler: str, options) -> str:
    """The message for a sampler that reported a failed solve (NFE < 0)."""
    if sampler == "ode":
        return (f"config.sampling.sampler='ode': the {options.solver} solver did not reach "
                f"sigma_min within {samplers.ode.MAX_STEPS} steps; loosen "
                f"config.sampling.ode.rtol={options.rtol} / atol={options.atol}")
    return (f"config.sampling.sampler={sampler!r} reported a failed solve (NFE < 0); see its "
            f"options in config.sampling.{sampler}")


class GuidedParams(NamedTuple):
    """The params the jitted sampling program takes under autoguidance: the main model's (one
    tree, or an ensemble's tuple) and the guiding model's, both program arguments."""

    main: Any
    guide: Any


def network_model_fn(network, parameterization, schedule, params, with_extras: bool = False):
    """The conditional denoiser (x_t [B,H,W,C], t [B], cond, r=None) -> network output of a
    network with its parameterization and schedule (see Generator.model_fn); params: one tree,
    or a tuple/list of them (an ensemble: the mean of the members' outputs). with_extras keeps
    the network's extra channels (e.g. a learned variance) after the prediction's C."""
    members = tuple(params) if isinstance(params, (tuple, list)) else (params,)
    fn = network.apply if with_extras else network.predict

    def model_fn(x_t, t, cond, r=None):
        outputs = []
        for member in members:
            apply = lambda x, c, p=member: fn(p, x, c, cond, train=False)  # noqa: E731
            outputs.append(parameterization.network_output(apply, x_t, t, schedule, r=r))
        return outputs[0] if len(outputs) == 1 else sum(outputs) / len(outputs)

    return model_fn


class Generator:
    """Draws images from a network's params, sharded over all devices.

    parts: any object with the typed parts network, schedule, parameterization, codec,
    conditioning and mesh (an Experiment has them). sampling: settings.SamplingOptions (guidance,
    labels, batch size, clipping); grid: the samplers' GridOptions; sampler: the registry Entry of
    the sampler, sampler_options: its options. guide: with sampling.guidance='autoguidance', the
    guiding run as an objectives.Teacher (Experiment.load_guide); its params travel into the
    jitted program as an argument (GuidedParams), so callers pass only the main params."""

    def __init__(self, parts, sampling, grid, sampler, sampler_options, guide=None):
        self.network, self.schedule = parts.network, parts.schedule
        self.parameterization, self.codec = parts.parameterization, parts.codec
        self.conditioning, self.mesh = parts.conditioning, parts.mesh
        self.sampler, self.sampler_options = sampler, sampler_options
        self.sampling, self.grid = sampling, grid
        # A sampler that reads the network's variance output (ddpm variance='learned').
        self.with_extras = bool(getattr(sampler_options, "uses_variance_output", False))
        if sampling.guidance == "autoguidance" and guide is None:
            raise ConfigError("config.sampling.guidance='autoguidance' needs the guiding run: "
                              "build the Generator with Experiment.generator(), which loads "
                              "config.sampling.guide_workdir")
        self.guide = guide if sampling.guidance == "autoguidance" else None
        self.x_shape = tuple(parts.network.x_shape)
        n_dev = self.mesh.devices.size
        # Round the per-call batch up to a multiple of the device count.
        self.batch = max(n_dev, -(-sampling.batch_size // n_dev) * n_dev)
        self._fn = None
        self.last_nfe: float | int | None = None  # NFE per sample of the last sample()/iter_samples

    def model_fn(self, params):
        """The conditional denoiser (x_t [B,H,W,C], t [B], cond, r=None) -> network output,
        through the parameterization's network_output (its c_in and c_noise, shared with
        training); r: a two-input model's second input, the end times [B] of a two-time model
        (mean_velocity) or the latent [B, D] of a GAN generator (x0_latent).

        params: one param tree, or a tuple/list of them: a checkpoint ensemble, whose denoiser is
        the mean of the members' network outputs. Every converter to x0/eps is affine in the
        output at fixed (x_t, t), so this averages their x0 (and eps, score) predictions too."""
        return network_model_fn(self.network, self.parameterization, self.schedule, params,
                                self.with_extras)

    def guide_fn(self, guide_params):
        """The guiding model's conditional denoiser, its output re-expressed in this model's
        parameterization: target(x0_hat, eps_hat) of the guide's own prediction, the output of
        this parameterization whose x0_hat (and eps_hat) are the guide's. With the same
        parameterization it is the guide's output itself (bit for bit). So autoguidance
        extrapolates x0_hat, eps_hat and the score, whatever each model predicts."""
        g = self.guide
        guide_fn = network_model_fn(g.network, g.parameterization, g.schedule, guide_params)
        if g.parameterization == self.parameterization:
            return guide_fn

        def reexpressed(x_t, t, cond, r=None):
            alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
            x0, eps = g.parameterization.x0_eps(x_t, guide_fn(x_t, t, cond, r=r), alpha, sigma)
            return self.parameterization.target(x0, eps, alpha, sigma).astype(jnp.float32)

        return reexpressed

    def bundle(self, params):
        """The params the jitted program takes: `params` with the guide's (GuidedParams) under
        autoguidance, else `params` itself."""
        if self.guide is None or isinstance(params, GuidedParams):
            return params
        return GuidedParams(params, self.guide.params)

    @property
    def guided_channels(self) -> int:
        """The output channels guidance extrapolates: sampling.guidance_channels, or with the
        variance channels passed (with_extras) only the prediction's, as GLIDE and DiT guide eps
        and take the variance from the conditional pass; 0: all."""
        if self.with_extras and not self.sampling.guidance_channels:
            return self.x_shape[-1]
        return self.sampling.guidance_channels

    def denoiser(self, params, cond):
        """The sampler's denoiser (x_t, t, r=None) -> output: the model with classifier-free
        guidance (sampling.guidance_scale and interval) on `cond`, where the conditioning has a
        null condition; or with autoguidance, the guiding model on the same `cond`.
        params: the main params, or GuidedParams (the guide's as an argument; given only the
        main params, the guide's are closed over as constants)."""
        s = self.sampling
        params = self.bundle(params)
        if isinstance(params, GuidedParams):
            model_fn = self.model_fn(params.main)
            return guidance.autoguidance(model_fn, self.guide_fn(params.guide), cond,
                                         s.guidance_scale, self.schedule, s.guidance_sigma_min,
                                         s.guidance_sigma_max, self.guided_channels)
        model_fn = self.model_fn(params)
        if not self.conditioning.supports_guidance:
            return lambda x_t, t, r=None: model_fn(x_t, t, cond, r=r)
        return guidance.classifier_free(model_fn, cond, self.conditioning.null(cond),
                                        s.guidance_scale, self.schedule, s.guidance_sigma_min,
                                        s.guidance_sigma_max, self.guided_channels)

    @property
    def clip(self):
        """The codec's bounds where sampling.clip_denoised, else None."""
        return self.codec.bounds if self.sampling.clip_denoised else None

    def _compile(self):
        batch, shape = self.batch, self.x_shape
        data_sharding = parallel.batch_sharding(self.mesh)

        def run(params, codec_params, key, labels):
            k_noise, k_sample = jax.random.split(key)
            noise = jax.random.normal(k_noise, (batch, *shape), jnp.float32)
            noise = jax.lax.with_sharding_constraint(noise, data_sharding)
            cond = self.conditioning.from_labels(labels)
            x, nfe = samplers.sample(self.denoiser(params, cond), self.schedule,
                                     self.parameterization, noise, k_sample,
                                     sampler=self.sampler.name, grid=self.grid,
                                     options=self.sampler_options, clip=self.clip)
            return to_uint8(self.codec.decode(codec_params, x)), jnp.asarray(nfe, jnp.int32)

        repl = parallel.replicated(self.mesh)
        # params keep the layout they arrive in (replicated, or FSDP-sharded by training).
        return jax.jit(run, in_shardings=(None, repl, repl, data_sharding),
                       out_shardings=(data_sharding, repl))

    def compile(self, params) -> float:
        """Compiles the sampling program ahead of time; returns the seconds it took."""
        start = time.perf_counter()
        if self._fn is None:
            fn = self._compile()
            labels = jax.device_put(np.zeros(self.batch, np.int32),
                                    parallel.batch_sharding(self.mesh))
            self._fn = fn.lower(self.bundle(params), self.codec.params, jax.random.PRNGKey(0),
                                labels).compile()
        return time.perf_counter() - start

    @property
    def nfe(self) -> float | int | None:
        """Network evaluations per sample in the last call (each is two network passes where
        classifier-free guidance or autoguidance is on)."""
        return self.last_nfe

    def labels_for(self, num_samples: int, seed: int = 0) -> np.ndarray:
        """[num_samples] int32 labels: sampling.labels cycled, or random ones from `seed`."""
        return self.conditioning.labels_for(num_samples, seed, tuple(self.sampling.labels))

    def sample(self, params, num_samples: int, seed: int = 0, labels=None,
               progress: bool | str = False):
        """Returns (uint8 images [num_samples, H, W, C] numpy, NFE per sample).

        labels: [num_samples] int, or None for sampling.labels (or random labels).
        progress: show a bar of images done with its ETA (process 0 only); a string names it."""
        out = list(self.iter_samples(params, num_samples, seed, labels, progress))
        return np.concatenate(out), self.nfe

    def iter_samples(self, params, num_samples: int, seed: int = 0, labels=None,
                     progress: bool | str = False):
        """Yields the images of `sample` batch by batch (uint8 [<= batch, H, W, C] numpy), so that
        large sample counts (e.g. 50k for FID) need not be held in memory at once. Batch i uses
        the key fold_in(PRNGKey(seed), i), so samples are reproducible from the seed."""
        self.compile(params)
        labels = self.labels_for(num_samples, seed) if labels is None else labels
        labels = np.asarray(labels, np.int32)
        nfes = []
        name = progress if isinstance(progress, str) else "sample"
        bar = progress_bar(num_samples, "img", name, enabled=bool(progress))
        try:
            for i, start in enumerate(range(0, num_samples, self.batch)):
                chunk = labels[start:start + self.batch]
                chunk = np.pad(chunk, (0, self.batch - len(chunk)))
                key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
                images, nfe = self._fn(self.bundle(params), self.codec.params, key,
                                       jax.device_put(chunk, parallel.batch_sharding(self.mesh)))
                if int(nfe) < 0:
                    raise ConfigError(_failed_solve(self.sampler.name, self.sampler_options))
                nfes.append(int(nfe))
                self.last_nfe = mean_nfe(nfes)
                images = parallel.to_host(images)[:num_samples - start]
                bar.update(len(images))
                bar.set_postfix(nfe=self.last_nfe)
                yield images
        finally:
            bar.close()
