"""The autoencoder stage of latent diffusion (--mode=train_autoencoder): config.autoencoder (the
AutoencoderKL's shape and its loss) plus the run's data, training, optim, ema, mesh and eval
sections, built into what the training loop needs, so an autoencoder trains with the same
compiled step (accumulation, NaN guard, EMA), checkpoints, resume, metrics, TensorBoard and
sample grids (here: originals next to their reconstructions) as a diffusion model.

At the end the run exports its weights as a diffusers AutoencoderKL folder, WORKDIR/autoencoder
(config.json + diffusion_pytorch_model.safetensors + the latent statistics that set the
diffusion model's normalisation), which codec.name='vae' with codec.vae.path=WORKDIR loads.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import data, ema, parallel, settings
from diffjax.errors import ConfigError
from diffjax.experiment import _settings, selected
from diffjax.settings import AutoencoderOptions


class AutoencoderStage:
    """What the training loop needs (the Experiment's interface) for an autoencoder run."""

    def __init__(self, config, workdir: str | None = None, load_data: bool = True):
        from diffjax.models.autoencoder import AutoencoderKL
        from diffjax.models.discriminator import PatchDiscriminator
        from diffjax.objectives.autoencoder import AutoencoderNetwork, AutoencoderObjective
        from diffjax.training.optim import build_optimizer

        self.config, self.seed = config, int(config.seed)
        self.workdir = os.path.abspath(workdir) if workdir else None
        self.options = _settings(AutoencoderOptions, config, "autoencoder")
        self.data = _settings(settings.DataOptions, config, "data")
        o = self.options
        training = _settings(settings.TrainingOptions, config, "training")
        self.training = dataclasses.replace(training, val_every_steps=0,
                                            num_steps=o.num_steps or training.num_steps,
                                            batch_size=o.batch_size or training.batch_size)
        optim = _settings(settings.OptimOptions, config, "optim")
        self.optim = dataclasses.replace(optim, lr=o.lr or optim.lr)
        self.sampling = _settings(settings.SamplingOptions, config, "sampling",
                                  _sampler_registry())
        self.eval = _settings(settings.EvalOptions, config, "eval", _metric_registry())
        self.mesh_options = m = _settings(settings.MeshOptions, config, "mesh")
        ema_name, ema_options = selected(config, ema.EMAS, ema.SECTION_FIELDS)
        self.ema = ema.EMAS.get(ema_name).factory(ema_options)
        self.image_shape, _ = data.dataset_spec(self.data.name, self.data.data_dir,
                                                self.data.image_size)
        h, w, c = self.image_shape
        if h % o.factor or w % o.factor:
            raise ConfigError(f"config.autoencoder.block_out_channels={tuple(o.block_out_channels)}"
                              f" downsamples by f={o.factor}, which must divide the image size "
                              f"{h}x{w}; use fewer levels or set config.data.image_size")
        self.model_config = o.model_config(c)
        dtype = jnp.bfloat16 if self.training.compute_dtype == "bfloat16" else jnp.float32
        self.module = AutoencoderKL(self.model_config, dtype=dtype)
        self.network = AutoencoderNetwork(self.module, self.image_shape, c)
        discriminator = (PatchDiscriminator(o.disc_channels, o.disc_layers, dtype)
                         if o.disc_weight > 0 else None)
        self.tx, self.lr_fn = build_optimizer(self.optim, self.training.num_steps)
        disc_optim = dataclasses.replace(self.optim, lr=o.disc_lr or self.optim.lr, b1=0.5,
                                         b2=0.9, name="adam", weight_decay=0.0)
        self.objective = AutoencoderObjective(
            self.module, self.image_shape, o.reconstruction, o.kl_weight, discriminator,
            o.disc_weight, o.disc_start_step, build_optimizer(disc_optim,
                                                              self.training.num_steps)[0])
        from diffjax.codecs import Pixels
        from diffjax.conditioning import make_conditioning

        self.codec, self.conditioning = Pixels(), make_conditioning("none", None, 0)
        self.mesh = parallel.make_mesh(m.num_devices, m.shape)
        parallel.check_batch(self.training.batch_size, self.mesh)
        self.state_sharding = parallel.state_sharding(self.abstract_state(), self.mesh)
        self.split = o.split or self.data.split
        self.val_pipeline = None  # held-out quality is measured by evaluate(), not a loss
        self.pipeline = self.eval_pipeline = None
        if load_data:
            self.pipeline = self._pipeline(self.split, self.seed, self.data.random_flip)
            split = o.eval_split or self.data.val_split
            if split:
                self.eval_pipeline = self._pipeline(split, 0, False)

    def _pipeline(self, split: str, seed: int, flip: bool) -> data.Pipeline:
        d = self.data
        source, _ = data.load_source(d.name, split, d.data_dir)
        return data.Pipeline(source, self.training.batch_size, seed, jax.process_index(),
                             jax.process_count(), d.image_size, flip, d.in_memory)

    # -- the Experiment interface the training loop uses --------------------------------------

    def _init(self, rng):
        from diffjax import state

        return state.init_state(rng, self.network, self.tx, self.ema, self.objective)

    def abstract_state(self):
        return jax.eval_shape(self._init, jax.random.PRNGKey(self.seed))

    def abstract_target(self):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            self.abstract_state(), self.state_sharding)

    def init_state(self):
        return jax.jit(self._init, out_shardings=self.state_sharding)(
            jax.random.PRNGKey(self.seed))

    def train_step_fn(self):
        from diffjax.training import step

        fn = step.make_train_step(self.network, self.objective, self.conditioning, self.codec,
                                  self.tx, self.ema, self.lr_fn, self.training.grad_accum_steps)
        return step.BoundStep(step.jit_train_step(fn, self.mesh, self.state_sharding), {})

    def global_batch(self, step: int):
        return parallel.to_global(self.pipeline.batch(step), self.mesh)

    def generator(self):
        """The sample grids: held-out (else training) images next to their reconstructions."""
        return Reconstructions(self, self.eval_pipeline or self.pipeline)

    def in_loop_eval(self, generator):
        """No FID during training: the held-out quality comes at the end (evaluate)."""
        return lambda step, params: None

    # -- reconstruction, export, evaluation ----------------------------------------------------

    def reconstruct_fn(self):
        """Jitted (ae params, images [B, H, W, C] in [-1, 1]) -> uint8 reconstructions of the
        posterior mean, split over the mesh."""
        from diffjax.codecs import to_uint8

        repl, sharded = parallel.replicated(self.mesh), parallel.batch_sharding(self.mesh)
        fn = lambda params, images: to_uint8(jnp.clip(  # noqa: E731
            self.objective.reconstruct(params, images)[0], -1.0, 1.0))
        return jax.jit(fn, in_shardings=(repl, sharded), out_shardings=sharded)

    def export_params(self, train_state):
        if self.options.export == "raw":
            return train_state.params
        return self.ema.params(train_state.ema, self.ema.default_key)

    def latent_stats(self, params) -> dict:
        """Mean and std of posterior samples z of the training split (no flips; key 0), over all
        entries and per channel; what normalization 'std' and 'channel' divide by."""
        from diffjax.core import posterior

        p, n = self.pipeline, self.pipeline.num_examples
        n = min(n, self.options.stats_num_images or n)
        repl, sharded = parallel.replicated(self.mesh), parallel.batch_sharding(self.mesh)

        def moments(params, images, key):
            mean, logvar = posterior.split_moments(self.module.apply(
                {"params": params}, images, method=self.module.encode).astype(jnp.float32))
            return posterior.sample(mean, logvar, key)

        fn = jax.jit(moments, in_shardings=(repl, sharded, repl), out_shardings=sharded)
        zs = []
        for i, (start, _, images) in enumerate(p.ordered_batches(n)):
            key = jax.random.fold_in(jax.random.PRNGKey(0), i)
            z = parallel.to_host(fn(params, parallel.to_global(images, self.mesh), key))
            zs.append(z[:n - start].astype(np.float64))
        z = np.concatenate(zs)
        per_channel = z.reshape(-1, z.shape[-1])
        return {"num_images": int(n), "split": self.split, "latent": "sample",
                "image_shape": list(self.image_shape), "latent_shape": list(z.shape[1:]),
                "mean": float(z.mean()), "std": float(z.std()),
                "channel_mean": per_channel.mean(0).tolist(),
                "channel_std": per_channel.std(0).tolist()}

    def export(self, train_state) -> str:
        """Writes WORKDIR/autoencoder (diffusers layout + latent statistics); returns it."""
        from diffjax.codecs.vae import EXPORT_DIR, LATENT_STATS_FILE
        from diffjax.models.diffusers_io import save_diffusers_autoencoder

        params = self.export_params(train_state)
        stats = self.latent_stats(params)
        stats.update(step=int(train_state.step), params=self.options.export)
        folder = os.path.join(self.workdir, EXPORT_DIR)
        if jax.process_index() == 0:
            tmp = folder + ".tmp"
            save_diffusers_autoencoder(tmp, self.model_config,
                                       jax.device_get(parallel.to_host(params)))
            with open(os.path.join(tmp, LATENT_STATS_FILE), "w") as f:
                json.dump(stats, f, indent=2)
            if os.path.isdir(folder):
                os.replace(folder, folder + ".old")
            os.replace(tmp, folder)
            import shutil

            shutil.rmtree(folder + ".old", ignore_errors=True)
        return folder


class Reconstructions:
    """The loop's grid writer for an autoencoder: sample(params, n) -> originals and their
    reconstructions side by side ([2k] uint8 images, k = n // 2), from the first k images of
    `pipeline`'s split; `sampling` holds grid_samples and seed."""

    def __init__(self, stage: AutoencoderStage, pipeline):
        self.stage, self.pipeline, self.sampling = stage, pipeline, stage.sampling
        self._fn = None

    def sample(self, params, num_samples: int, seed: int = 0):
        if self._fn is None:
            self._fn = self.stage.reconstruct_fn()
        k = max(1, num_samples // 2)
        recon = np.concatenate([parallel.to_host(self._fn(params, parallel.to_global(
            local, self.stage.mesh))) for _, _, local in self.pipeline.ordered_batches(k)])[:k]
        images, _ = self.pipeline.examples(np.arange(k) % self.pipeline.num_examples)
        pairs = np.stack([images, recon], axis=1)
        return pairs.reshape(2 * k, *images.shape[1:]), 0


def _sampler_registry():
    from diffjax.samplers import SAMPLERS

    return SAMPLERS


def _metric_registry():
    from diffjax.evaluation.scores import METRICS

    return METRICS
