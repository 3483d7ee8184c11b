"""The one reader of the config: `Experiment(config)` turns every section into typed settings
and parts (codec, conditioning, schedule, parameterization, network, objective, EMA, optimizer,
sampler, metrics, mesh), checking each section against its options dataclass and the rules that
span sections. Nothing else in diffjax reads a ConfigDict's fields."""

from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import codecs, conditioning, data, ema, parallel, settings
from diffjax.core import augment, parameterizations, schedules
from diffjax.errors import ConfigError
from diffjax.models import NETWORKS, NetworkSpec, count_params
from diffjax.models.network import InputLabels
from diffjax.objectives import OBJECTIVES, ObjectiveContext
from diffjax.options import OptionError, from_mapping
from diffjax.registry import Registry
from diffjax.samplers import SAMPLERS, GridOptions

DIFFUSION_FIELDS = ("schedule", "parameterization", "sigma_data", "latent_dim")
DIGIT_DATASETS = ("mnist_embedded", "mnist")  # what the text conditioning's captions describe


def _plain(section) -> dict:
    return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def _check_keys(path: str, values: dict, allowed) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(f"config.{path} has no field {unknown[0]!r}; its fields are: "
                          f"{', '.join(sorted(allowed))}")


def part_options(config, registry: Registry, name: str):
    """The options dataclass of part `name` of `registry` from config.<section>.<name> (its
    defaults where the section lacks it), or None for a part without options."""
    entry = registry.get(name)
    values = _plain(config[registry.section].get(name, {}) or {})
    path = f"{registry.section}.{name}"
    if entry.options is None:
        _check_keys(path, values, ())
        return None
    return from_mapping(entry.options, values, path)


def _build(registry: Registry, name: str, options, *args):
    """registry's factory for `name`; an OptionError it raises gets the section's path."""
    try:
        return registry.get(name).factory(options, *args)
    except OptionError as e:
        raise e.at(f"{registry.section}.{name}") from None


def selected(config, registry: Registry, extra_fields=()) -> tuple[str, object]:
    """(name, options) of the part config.<section>.name picks; the section may hold only
    'name', `extra_fields` and the sections of registered parts."""
    section = _plain(config[registry.section])
    _check_keys(registry.section, section, ("name", *extra_fields, *registry.names()))
    name = section["name"]
    return name, part_options(config, registry, name)


def _settings(cls, config, key: str, parts: Registry | None = None):
    values = _plain(config[key]) if key in config else {}
    if parts is not None:
        values = {k: v for k, v in values.items() if k not in parts.names()}
    return from_mapping(cls, values, key)


def ema_posthoc_options(config) -> ema.PosthocOptions:
    """config.ema.snapshot_every / sigma_rel, checked against the EMA they need (power)."""
    section = _plain(config.ema)
    options = from_mapping(ema.PosthocOptions, {k: section[k] for k in ema.SECTION_FIELDS
                                                if k in section}, "ema")
    for field in ema.SECTION_FIELDS:
        value = getattr(options, field)
        if value and section["name"] != "power":
            raise ConfigError(f"config.ema.{field}={value} is invalid with config.ema.name="
                              f"{section['name']!r}: post-hoc EMA needs EDM2's power-function "
                              f"profiles; set config.ema.name='power'")
    return options


def configure_backend(config) -> None:
    """Applies config.mesh.cpu_devices (split a CPU host into N devices); it must run before
    JAX starts a backend, so launch.py calls it first. GPU/TPU backends ignore it."""
    cpu_devices = int(config.mesh.cpu_devices)
    if cpu_devices < 0:
        raise ConfigError(f"config.mesh.cpu_devices={cpu_devices} is invalid: must be >= 0")
    if cpu_devices:
        jax.config.update("jax_num_cpu_devices", cpu_devices)


def _warn_unapplied_cpu_devices(config) -> None:
    """A CPU backend started before configure_backend(config) keeps its own device count; say so
    rather than run silently on fewer devices than the config asks for."""
    wanted = int(config.mesh.cpu_devices)
    if wanted and jax.default_backend() == "cpu" and jax.local_device_count() != wanted:
        logging.warning("config.mesh.cpu_devices=%d, but the CPU backend has %d device(s): JAX "
                        "started before configure_backend(config) ran; call it first, as "
                        "launch.py does", wanted, jax.local_device_count())


def _check_every_section(config) -> None:
    """Every registered part's section present in the config holds valid options, picked or
    not, so a typo in an unused section fails at start-up too."""
    from diffjax import plugins

    for registry in plugins.KINDS.values():
        if registry.section in config:
            for name in registry.names():
                if name in config[registry.section]:
                    part_options(config, registry, name)


class Experiment:
    """Everything a run needs, built from a config: typed settings (`data`, `training`, `optim`,
    `sampling`, `inpaint`, `eval`, `mesh_options`, `benchmark`, `likelihood`) and parts.
    load_data: build the data pipelines (not needed to sample, evaluate or count params).
    devices=False: no mesh (only the config is checked, against the device count it asks for
    where it names one), so that a config can be checked on another machine than the one that
    will run it."""

    def __init__(self, config, workdir: str | None = None, load_data: bool = True,
                 devices: bool = True):
        self.config = config
        self.workdir = os.path.abspath(workdir) if workdir else None
        self.seed = int(config.seed)
        self._guides: dict = {}  # autoguidance's guiding runs by (workdir, step), see load_guide
        self._read_settings(config)
        _check_every_section(config)
        if "autoencoder" in config:  # the first stage's section (--mode=train_autoencoder)
            _settings(settings.AutoencoderOptions, config, "autoencoder")
        m = self.mesh_options
        if devices:
            _warn_unapplied_cpu_devices(config)
        self.mesh = parallel.make_mesh(m.num_devices, m.shape) if devices else None
        d = self.data
        self.image_shape, self.num_classes = data.dataset_spec(d.name, d.data_dir, d.image_size)
        self.pipeline = self.val_pipeline = None
        if load_data:  # missing data is reported before anything that depends on it
            self.pipeline = self._pipeline(d.split, self.seed, d.random_flip)
            if d.val_split and self.training.val_every_steps:
                # held out: fixed order (permutation seed 0), no flips
                self.val_pipeline = self._pipeline(d.val_split, 0, False)
        self._build_parts(config)
        self._check_across_sections()
        if self.pipeline is not None and self.codec.cache:
            from diffjax import latent_cache

            self.pipeline = latent_cache.cached_pipeline(self.codec, self.data, self.pipeline,
                                                         self.mesh)
        from diffjax.training.optim import build_optimizer

        self.tx, self.lr_fn = build_optimizer(self.optim, self.training.num_steps)
        self.state_sharding = (parallel.state_sharding(self.abstract_state(), self.mesh)
                               if self.mesh is not None else None)

    def _read_settings(self, config) -> None:
        from diffjax.evaluation.scores import METRICS

        self.data = _settings(settings.DataOptions, config, "data")
        self.training = _settings(settings.TrainingOptions, config, "training")
        self.optim = _settings(settings.OptimOptions, config, "optim")
        self.sampling = _settings(settings.SamplingOptions, config, "sampling", SAMPLERS)
        self.inpaint = _settings(settings.InpaintOptions, config, "inpaint")
        self.complete = _settings(settings.CompleteOptions, config, "complete")
        self.eval = _settings(settings.EvalOptions, config, "eval", METRICS)
        self.mesh_options = _settings(settings.MeshOptions, config, "mesh")
        self.benchmark = _settings(settings.BenchmarkOptions, config, "benchmark")
        self.likelihood = _settings(settings.LikelihoodOptions, config, "likelihood")
        self.grid = from_mapping(GridOptions, {k: getattr(self.sampling, k) for k in
                                               ("num_steps", "spacing", "rho")}, "sampling")
        self.sampler = SAMPLERS.get(self.sampling.sampler)
        self.sampler_options = part_options(config, SAMPLERS, self.sampling.sampler)
        # RePaint's ancestral steps (--mode=inpaint) use the ddpm sampler's options.
        self.repaint_options = part_options(config, SAMPLERS, "ddpm")
        self.metrics = {}
        for name in self.eval.metrics:
            self.metrics[name] = _build(METRICS, name, part_options(config, METRICS, name))

    def _build_parts(self, config) -> None:
        self.codec = _build(codecs.CODECS, *selected(config, codecs.CODECS), self.image_shape)
        self.x_shape = tuple(self.codec.x_shape(self.image_shape))
        self.conditioning = _build(conditioning.CONDITIONINGS,
                                   *selected(config, conditioning.CONDITIONINGS),
                                   self.num_classes)
        diffusion = _plain(config.diffusion)
        _check_keys("diffusion", diffusion, (*DIFFUSION_FIELDS, *schedules.SCHEDULES.names()))
        if not diffusion["sigma_data"] > 0:
            raise ConfigError(f"config.diffusion.sigma_data={diffusion['sigma_data']!r} is "
                              f"invalid: must be > 0")
        latent_dim = diffusion.get("latent_dim", 100)
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ConfigError(f"config.diffusion.latent_dim={latent_dim!r} is invalid: must be an "
                              f"int >= 1 (the x0_latent parameterization's latent width)")
        schedule_name = diffusion["schedule"]
        self.schedule = _build(schedules.SCHEDULES, schedule_name,
                               part_options(config, schedules.SCHEDULES, schedule_name))
        self.parameterization = parameterizations.make_parameterization(
            parameterizations.PARAMETERIZATIONS.get(diffusion["parameterization"]).name,
            float(diffusion["sigma_data"]), self.schedule, latent_dim)
        if self.conditioning.text is not None and self.data.name not in DIGIT_DATASETS:
            raise ConfigError(f"config.conditioning.name='text' captions digits (the embedded "
                              f"caption set), but config.data.name={self.data.name!r}; allowed: "
                              f"{', '.join(DIGIT_DATASETS)}")
        if self.sampling.prompts:
            if self.conditioning.text is None:
                raise ConfigError(f"config.sampling.prompts={tuple(self.sampling.prompts)} is "
                                  f"invalid: prompts need a text-conditional model "
                                  f"(config.conditioning.name='text')")
            self.conditioning = self.conditioning.with_prompts(self.sampling.prompts)
        told = self.data.augment_p > 0 and self.data.augment_labels
        if self.data.augment_p > 0:
            if self.codec.cache:
                raise ConfigError(f"config.data.augment_p={self.data.augment_p} augments images "
                                  f"in the train step, but config.codec.name="
                                  f"{config.codec.name!r} trains on cached latents; allowed: "
                                  f"augment_p=0 with a cached codec, or a codec without a cache")
        if told:
            self.conditioning = conditioning.AugmentLabels(self.conditioning, augment.NUM_LABELS)
        if config.conditioning.name == "low_res" and config.codec.name != "pixels":
            raise ConfigError(f"config.conditioning.name='low_res' conditions pixels on "
                              f"downsampled pixels, but config.codec.name="
                              f"{config.codec.name!r}; allowed: codec.name='pixels'")
        self.conditioning = self.conditioning.bind(self.x_shape)
        spec = NetworkSpec(self.x_shape, self.conditioning.num_classes,
                           self.training.compute_dtype, self.conditioning.text,
                           self.parameterization.num_noise_inputs,
                           getattr(self.parameterization, "latent_dim", 0),
                           augment.NUM_LABELS if told else 0)
        self.network = _build(NETWORKS, *selected(config, NETWORKS), spec)
        embedded = getattr(self.network, "embedded", ())
        maps = tuple(m for m in self.conditioning.input_maps() if m[0] not in embedded)
        if maps:
            self.network = InputLabels(self.network, maps)
        ctx = ObjectiveContext(self.schedule, self.parameterization, self.network,
                               self.conditioning, self.training.num_steps, tuple(self.x_shape),
                               self.load_run)
        self.objective = _build(OBJECTIVES, *selected(config, OBJECTIVES), ctx)
        self.ema = _build(ema.EMAS, *selected(config, ema.EMAS, ema.SECTION_FIELDS))
        self.posthoc = ema_posthoc_options(config)
        if self.network.out_channels != self.x_shape[-1]:
            raise ConfigError(f"config.model.name={config.model.name!r} predicts "
                              f"{self.network.out_channels} channels, but x has "
                              f"{self.x_shape[-1]} (the shape of config.codec.name="
                              f"{config.codec.name!r}'s space)")
        wanted = self.parameterization.num_noise_inputs
        if self.network.num_noise_inputs != wanted:
            raise ConfigError(f"config.model.name={config.model.name!r} takes "
                              f"{self.network.num_noise_inputs} noise input(s); config.diffusion."
                              f"parameterization={diffusion['parameterization']!r} supplies "
                              f"{wanted} (c_noise): use a network that embeds {wanted} (unet, "
                              f"dit)")
        wanted = getattr(self.parameterization, "latent_dim", 0)
        if self.network.latent_dim != wanted:
            raise ConfigError(f"config.model.name={config.model.name!r} embeds a latent of "
                              f"{self.network.latent_dim} entries; config.diffusion."
                              f"parameterization={diffusion['parameterization']!r} feeds "
                              f"{wanted}: use a network that embeds it (unet, dit)")

    def run_config(self, workdir: str, key: str):
        """The config of the trained run in `workdir` (its config.json over this config), on
        this run's mesh. key: the config field that named it, for the error when it is not a
        trained run."""
        import json

        from diffjax import config_lib

        config_path = os.path.join(os.path.abspath(workdir), "config.json")
        if not os.path.isfile(config_path):
            raise ConfigError(f"config.{key}={workdir!r} is invalid: {config_path} does not "
                              f"exist; name the workdir of a trained run of this codebase "
                              f"(train it first: python launch.py --workdir {workdir})")
        with open(config_path) as f:
            saved = json.load(f)
        config = config_lib.merge_saved(self.config, saved, set())
        config.mesh = self.config.mesh
        return config

    def load_run(self, workdir: str, key: str, step: int | None = None):
        """The trained run in `workdir` as an objectives.Teacher, built from its config.json on
        this run's devices, with its sampling params (default EMA, newest good checkpoint).
        key: the config field that named it, for errors. step: None, the checkpoints its own
        config.sampling names; 0, its newest good one; else that step."""
        from diffjax import restore
        from diffjax.objectives import Teacher

        path = os.path.abspath(workdir)
        run_config = self.run_config(workdir, key)
        # The loaded run samples plainly (a run saved before autoguidance keeps ours otherwise).
        run_config.sampling.guidance, run_config.sampling.guide_workdir = "classifier_free", ""
        run_config.sampling.guide_checkpoint_step = 0
        if step is not None:
            run_config.sampling.checkpoint_steps = (step,) if step else ()
        run = Experiment(run_config, load_data=False)  # on this run's devices
        try:
            params, step = restore.sampling_params(run, path)
        except FileNotFoundError as e:
            raise ConfigError(f"config.{key}={workdir!r} is invalid: {e}") from None
        return Teacher(run.network, run.schedule, run.parameterization, params,
                       tuple(run.x_shape), run.conditioning.num_classes, run.generator().clip,
                       int(step), path, run_config)

    def load_guide(self, sampling: settings.SamplingOptions | None = None):
        """Autoguidance's guiding run (sampling.guide_workdir at guide_checkpoint_step, default
        config.sampling) as an objectives.Teacher, loaded once. It must make the same x (shape
        and codec), with the same conditioning and schedule; its network and parameterization
        may differ (the Generator combines x0_hat, see Generator.guide_fn)."""
        from diffjax import restore

        s = sampling or self.sampling
        where = (os.path.abspath(s.guide_workdir), s.guide_checkpoint_step)
        if where in self._guides:
            return self._guides[where]
        key = "sampling.guide_workdir"
        directory = os.path.join(where[0], "checkpoints")
        if s.guide_checkpoint_step and os.path.isfile(os.path.join(where[0], "config.json")):
            steps = []
            if os.path.isdir(directory):
                ckpt = restore.checkpointer(where[0])
                try:
                    steps = ckpt.steps()
                finally:
                    ckpt.close()
            if s.guide_checkpoint_step not in steps:
                raise ConfigError(f"config.sampling.guide_checkpoint_step="
                                  f"{s.guide_checkpoint_step} is invalid: {directory} holds "
                                  f"steps {steps} (0: the newest)")
        guide = self.load_run(s.guide_workdir, key, s.guide_checkpoint_step)
        bad = f"config.{key}={s.guide_workdir!r} is invalid for autoguidance:"
        if tuple(guide.x_shape) != tuple(self.x_shape):
            raise ConfigError(f"{bad} the guiding model makes x of shape {tuple(guide.x_shape)}, "
                              f"this run's x is {tuple(self.x_shape)}; allowed: a guide of the "
                              f"same image shape (config.data.image_size, config.codec)")
        for field in ("codec.name", "conditioning.name", "diffusion.schedule"):
            section, name = field.split(".")
            ours, theirs = self.config[section][name], guide.config[section][name]
            if ours != theirs:
                raise ConfigError(f"{bad} the guiding model's config.{field}={theirs!r}, this "
                                  f"run's is {ours!r}; allowed: a guide with the same {name}")
        if guide.num_classes != self.conditioning.num_classes:
            raise ConfigError(f"{bad} the guiding model is conditioned on {guide.num_classes} "
                              f"classes, this run on {self.conditioning.num_classes}; allowed: "
                              f"a guide with the same conditioning")
        name = self.config.diffusion.schedule
        ours = part_options(self.config, schedules.SCHEDULES, name)
        theirs = part_options(guide.config, schedules.SCHEDULES, name)
        if ours != theirs:
            raise ConfigError(f"{bad} the guiding model's schedule config.diffusion.{name} is "
                              f"{theirs}, this run's is {ours}; allowed: the same schedule")
        for what in ("num_noise_inputs", "latent_dim"):
            if getattr(guide.parameterization, what, 0) != getattr(self.parameterization, what, 0):
                raise ConfigError(f"{bad} its parameterization "
                                  f"{guide.parameterization.name!r} has another {what} than "
                                  f"this run's {self.parameterization.name!r}")
        self._guides[where] = guide
        return guide

    def _num_devices(self) -> int | None:
        """The devices the run uses: the mesh's, or without one the count the config names."""
        if self.mesh is not None:
            return self.mesh.devices.size
        m = self.mesh_options
        return m.num_devices if m.num_devices != -1 else (m.cpu_devices or None)

    def _check_across_sections(self) -> None:
        """The rules that span sections."""
        t, s, cond = self.training, self.sampling, self.conditioning
        n = self._num_devices()
        if n is not None:
            parallel.mesh_shape(n, self.mesh_options.shape)
            parallel.check_batch(t.batch_size, n)
            parallel.check_batch(t.batch_size // t.grad_accum_steps, n,
                                 "a micro-batch (config.training.batch_size / grad_accum_steps)")
        from diffjax.objectives import Objective

        if t.val_every_steps and (type(self.objective).validation_losses
                                  is Objective.validation_losses):
            raise ConfigError(f"config.training.val_every_steps={t.val_every_steps} is invalid: "
                              f"config.objective.name={self.config.objective.name!r} has no "
                              f"validation loss; set it to 0")
        self._check_metric_counts()
        if t.val_every_steps and not self.data.val_split:
            raise ConfigError(f"config.training.val_every_steps={t.val_every_steps} is invalid: "
                              f"the validation loss needs a held-out split: set "
                              f"config.data.val_split, e.g. 'train[90%:]' with "
                              f"config.data.split='train[:90%]'")
        if self.schedule.is_discrete and s.num_steps > self.schedule.num_timesteps:
            raise ConfigError(f"config.sampling.num_steps={s.num_steps} is invalid: must be <= "
                              f"the schedule's num_timesteps={self.schedule.num_timesteps}")
        from diffjax.samplers import time_grid

        time_grid(self.schedule, self.grid.num_steps, self.grid.spacing, rho=self.grid.rho)
        self.objective.check_sampling(s.sampler, self.grid.num_steps, self.grid.spacing)
        validate = getattr(self.sampler_options, "validate", None)
        if validate is not None:  # a sampler's rules on the model it samples
            validate(self.schedule, self.parameterization, self.grid.num_steps)
        if self.posthoc.sigma_rel and (s.ema_decays or s.checkpoint_steps):
            raise ConfigError(f"config.ema.sigma_rel={self.posthoc.sigma_rel} picks a post-hoc "
                              f"EMA at the newest snapshot; it cannot be combined with "
                              f"config.sampling.ema_decays={tuple(s.ema_decays)} or "
                              f"checkpoint_steps={tuple(s.checkpoint_steps)}: set those to ()")
        kept = self.ema.keys()
        for decay in s.ema_decays:
            if decay != 0.0 and decay not in kept:
                raise ConfigError(
                    f"config.sampling.ema_decays={tuple(s.ema_decays)} is invalid: {decay} is "
                    f"not an EMA rate this run keeps; allowed: {', '.join(map(str, kept))} "
                    f"(config.{self.ema_path}) or 0.0 (the raw params)")
        classifier_free = s.guidance == "classifier_free"
        if classifier_free and s.guidance_scale != 1.0 and not cond.supports_guidance:
            raise ConfigError(f"config.sampling.guidance_scale={s.guidance_scale} is invalid: "
                              f"guidance needs a conditioning with a null condition, e.g. "
                              f"config.conditioning.name='class_label'")
        if s.guidance_channels > self.x_shape[-1]:
            raise ConfigError(f"config.sampling.guidance_channels={s.guidance_channels} is "
                              f"invalid: x has {self.x_shape[-1]} channels (0: guide all)")
        num_ids = cond.num_classes if cond.text is None else len(cond.prompt_tokens)
        if s.labels and not num_ids:
            raise ConfigError(f"config.sampling.labels={tuple(s.labels)} is invalid: labels need "
                              f"a class-conditional model (config.conditioning.name="
                              f"'class_label')")
        bad = [label for label in s.labels if label >= num_ids]
        if bad:
            what = "for this dataset" if cond.text is None else "(ids of the sampling prompts)"
            raise ConfigError(f"config.sampling.labels={tuple(s.labels)} is invalid: labels must "
                              f"be in [0, {num_ids}) {what}; got {bad}")
        if classifier_free and s.guidance_scale != 1.0 and not cond.guidance_trained:
            logging.warning("config.sampling.guidance_scale=%s but the conditioning never drops "
                            "to the null condition in training (its dropout is 0): the "
                            "unconditional model was never trained", s.guidance_scale)

    def _check_metric_counts(self) -> None:
        e = self.eval
        # The default weights have no 1008-way head: IS is then never computed.
        if "inception_score" in self.metrics and e.weights not in ("", "default"):
            splits = self.metrics["inception_score"].options.splits
            if splits > e.num_samples:
                raise ConfigError(f"config.eval.inception_score.splits={splits} is invalid: "
                                  f"must be <= config.eval.num_samples={e.num_samples}")
        if "precision_recall" in self.metrics:
            k = self.metrics["precision_recall"].options.k
            if k >= e.num_samples:
                raise ConfigError(f"config.eval.precision_recall.k={k} is invalid: must be < "
                                  f"config.eval.num_samples={e.num_samples}")

    @property
    def ema_path(self) -> str:
        return f"ema.{self.config.ema.name}"

    # -- the train state ---------------------------------------------------------------------

    def _init(self, rng):
        from diffjax import state

        return state.init_state(rng, self.network, self.tx, self.ema, self.objective)

    def abstract_state(self):
        """Shapes and dtypes of the train state, without computing anything."""
        return jax.eval_shape(self._init, jax.random.PRNGKey(self.seed))

    def num_params(self) -> int:
        """Scalars in the network's params."""
        return count_params(self.abstract_state().params)

    def init_state(self):
        """A fresh state, laid out by `state_sharding` over the mesh."""
        init = jax.jit(self._init, out_shardings=self.state_sharding)
        return init(jax.random.PRNGKey(self.seed))

    def abstract_target(self):
        """ShapeDtypeStructs with this mesh's shardings: a restore target for any checkpoint of
        this run, whatever mesh or device count saved it."""
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            self.abstract_state(), self.state_sharding)

    # -- training ----------------------------------------------------------------------------

    def train_step_fn(self):
        """The jitted train step of this experiment: step(state, batch) -> (state, metrics)."""
        from diffjax.training import step

        fn = step.make_train_step(self.network, self.objective, self.conditioning, self.codec,
                                  self.tx, self.ema, self.lr_fn, self.training.grad_accum_steps,
                                  self._augment())
        return step.BoundStep(step.jit_train_step(fn, self.mesh, self.state_sharding),
                              self.codec.params)

    def _augment(self):
        """The train step's augmentation (images, key) -> (images, labels), or None."""
        d = self.data
        if not d.augment_p:
            return None
        return functools.partial(augment.augment, p=float(d.augment_p),
                                 transforms=tuple(d.augment_transforms))

    def global_batch(self, step: int):
        return parallel.to_global(self.pipeline.batch(step), self.mesh)

    def _pipeline(self, split: str, seed: int, random_flip: bool) -> data.Pipeline:
        """Global batches of training.batch_size from `split`; its decoded images must have the
        data's image shape."""
        d = self.data
        source, _ = data.load_source(d.name, split, d.data_dir)
        pipeline = data.Pipeline(source, self.training.batch_size, seed, jax.process_index(),
                                 jax.process_count(), d.image_size, random_flip, d.in_memory,
                                 self.num_classes)
        if tuple(pipeline.image_shape) != self.image_shape:
            raise ConfigError(f"config.data.split={split!r} of config.data.name={d.name!r}: "
                              f"decoded images have shape {pipeline.image_shape}, expected "
                              f"{self.image_shape}")
        return pipeline

    # -- sampling ----------------------------------------------------------------------------

    def generator(self, sampling: settings.SamplingOptions | None = None, grid=None):
        """A Generator of this experiment's parts with `sampling` (default: config.sampling),
        whose sampler is sampling.sampler with its options from config.sampling.<sampler>; with
        sampling.guidance='autoguidance', the guiding run loaded (load_guide)."""
        from diffjax.generator import Generator

        sampling = sampling or self.sampling
        if self.config.conditioning.name == "low_res" and self.conditioning.images is None:
            self.with_low_res(*self.default_low_res())
        sampler = SAMPLERS.get(sampling.sampler)
        options = part_options(self.config, SAMPLERS, sampling.sampler)
        guide = self.load_guide(sampling) if sampling.guidance == "autoguidance" else None
        return Generator(self, sampling, grid or self.grid, sampler, options, guide)

    def with_low_res(self, images, labels=None) -> None:
        """Samples of a low_res model from now on upsample `images` [N, size, size, C] (uint8, or
        float in [-1, 1]), in turn, with class labels [N] where the stage is class-conditional
        (None: random ones); ConfigError where their shape does not fit the model."""
        self.conditioning = self.conditioning.with_images(images, labels)

    def default_low_res(self) -> tuple[np.ndarray, np.ndarray]:
        """The first low_res.DEFAULT_TABLE images of the training split, downsampled as training
        does, and their labels: what a low_res model's sample grids and --mode=eval upsample by
        default."""
        from diffjax.conditioning.low_res import DEFAULT_TABLE, downsample

        source, _ = data.load_source(self.data.name, self.data.split, self.data.data_dir)
        pipeline = data.Pipeline(source, 1, 0, image_size=self.data.image_size, in_memory=False)
        images, labels = pipeline.examples(np.arange(min(len(source), DEFAULT_TABLE)))
        x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
        return np.asarray(downsample(x, self.conditioning.options.size)), labels


def validate(config, devices: bool = True) -> Experiment:
    """Checks every section of `config` (raising ConfigError naming the bad key, value and what
    is allowed) by building its Experiment without data; returns it. devices=False checks it
    without this machine's devices (see Experiment)."""
    return Experiment(config, load_data=False, devices=devices)
