"""Latent codecs: a KL autoencoder's latent space (LDM, Rombach et al. 2022).

codec.name='vae' loads any diffusers-format AutoencoderKL folder (config.json +
diffusion_pytorch_model.safetensors) or a `--mode=train_autoencoder` workdir (which exports one to
WORKDIR/autoencoder); codec.name='sd_vae' is Stable Diffusion's f8, 4-channel VAE
(stabilityai/sd-vae-ft-ema or -ft-mse), whose architecture is known without the weights, so its
recipes validate and count parameters before the download.

x = (z - shift) * scale with z the posterior sample (or its mean, latent='mean'). normalization:
  auto     a diffjax autoencoder's measured std (its diffjax_latent_stats.json), else 'config'
  std      scale = 1 / std of the latents of the autoencoder's training images (LDM's rule)
  channel  per channel: shift = mean_c, scale = 1 / std_c (EDM2's latent normalisation)
  config   the folder's config.json: scaling_factor (SD: 0.18215), with shift_factor (SD3) or
           latents_mean / latents_std (SDXL-style) where present
  manual   codec.<name>.scale and .shift
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.codecs import CODECS, Codec
from diffjax.core import posterior
from diffjax.errors import ConfigError
from diffjax.options import check, choice

EXPORT_DIR = "autoencoder"  # WORKDIR/autoencoder of a --mode=train_autoencoder run
LATENT_STATS_FILE = "diffjax_latent_stats.json"
LATENTS = ("sample", "mean")
NORMALIZATIONS = ("auto", "std", "channel", "config", "manual")
SD_VARIANTS = ("ft-ema", "ft-mse")  # same architecture; the decoders were fine-tuned apart


@dataclasses.dataclass(frozen=True)
class VaeOptions:
    """path: a diffusers AutoencoderKL folder or a train_autoencoder workdir; latent: draw z from
    the posterior each step ('sample', as LDM and DiT) or use its mean; normalization: see the
    module docstring (scale, shift: the 'manual' values); cache: encode the training split once
    (each image and its flip) into cache_dir ('': <data dir>/diffjax_latent_cache) and draw z from
    the stored mean and log-variance with the step's key; compute_dtype of the autoencoder."""

    path: str = ""
    latent: str = "sample"
    normalization: str = "auto"
    scale: float = 0.0
    shift: float = 0.0
    cache: bool = False
    cache_dir: str = ""
    compute_dtype: str = "float32"

    def __post_init__(self):
        choice("latent", self.latent, LATENTS)
        choice("normalization", self.normalization, NORMALIZATIONS)
        choice("compute_dtype", self.compute_dtype, ("float32", "bfloat16"))
        if self.normalization == "manual":
            check(self.scale > 0, "scale", self.scale, "must be > 0 with normalization='manual'")


@dataclasses.dataclass(frozen=True)
class SdVaeOptions(VaeOptions):
    """VaeOptions for Stable Diffusion's VAE; path may stay '' to validate or count parameters,
    but training and sampling need the downloaded folder. variant only documents which."""

    normalization: str = "config"
    variant: str = "ft-ema"

    def __post_init__(self):
        super().__post_init__()
        choice("variant", self.variant, SD_VARIANTS)


def resolve_path(path: str, field: str = "config.codec.vae.path") -> str:
    """The diffusers folder `path` names: itself, or WORKDIR/autoencoder of a train_autoencoder
    run. ConfigError naming `field` where it holds no autoencoder."""
    from diffjax.models.diffusers_io import is_diffusers_autoencoder

    folder = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(os.path.join(folder, EXPORT_DIR)):
        return os.path.join(folder, EXPORT_DIR)
    if os.path.isdir(folder) and is_diffusers_autoencoder(folder):
        return folder
    if os.path.isdir(os.path.join(folder, "checkpoints")):
        raise ConfigError(f"{field}={path!r} is a run without an exported autoencoder "
                          f"({folder}/{EXPORT_DIR} is missing): finish --mode=train_autoencoder "
                          f"there, or rerun it, which exports the newest checkpoint")
    what = "does not exist" if not os.path.exists(folder) else "holds no autoencoder"
    raise ConfigError(f"{field}={path!r} {what}: expected a diffusers AutoencoderKL folder "
                      f"(config.json + diffusion_pytorch_model.safetensors) or a workdir of "
                      f"--mode=train_autoencoder")


def params_hash(params) -> str:
    """SHA-256 of every leaf's bytes in path order: changes with any weight."""
    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params),
                             key=lambda kv: jax.tree_util.keystr(kv[0])):
        array = np.asarray(leaf)
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def read_latent_stats(folder: str) -> dict | None:
    path = os.path.join(folder, LATENT_STATS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def normalization(options: VaeOptions, ae_config, stats: dict | None, field: str):
    """(shift, scale) float32 [C] for the options' normalization (see the module docstring)."""
    channels = ae_config.latent_channels
    ones = np.ones(channels, np.float32)
    mode = options.normalization
    if mode == "auto":
        mode = "std" if stats is not None else "config"
    if mode in ("std", "channel") and stats is None:
        raise ConfigError(f"{field}.normalization={options.normalization!r} needs the latent "
                          f"statistics a train_autoencoder run stores ({LATENT_STATS_FILE}); this "
                          f"autoencoder has none: use 'config' or 'manual'")
    if mode == "std":
        return 0.0 * ones, ones / np.float32(stats["std"])
    if mode == "channel":
        return (np.asarray(stats["channel_mean"], np.float32),
                1.0 / np.asarray(stats["channel_std"], np.float32))
    if mode == "manual":
        return np.float32(options.shift) * ones, np.float32(options.scale) * ones
    c = ae_config
    if c.latents_mean is not None and c.latents_std is not None:
        return (np.asarray(c.latents_mean, np.float32),
                np.float32(c.scaling_factor) / np.asarray(c.latents_std, np.float32))
    return np.float32(c.shift_factor or 0.0) * ones, np.float32(c.scaling_factor) * ones


class VaeCodec(Codec):
    """A KL autoencoder's latent space: x [B, H/f, W/f, C] = (z - shift) * scale. params:
    {'autoencoder': weights} (None: architecture only; encode/decode then refuse)."""

    name = "vae"
    bounds = None

    def __init__(self, ae_config, ae_params, shift, scale, options: VaeOptions, source: str,
                 field: str):
        from diffjax.models.autoencoder import AutoencoderKL

        dtype = jnp.bfloat16 if options.compute_dtype == "bfloat16" else jnp.float32
        self.ae_config, self.options, self.source, self.field = ae_config, options, source, field
        self.module = AutoencoderKL(ae_config, dtype=dtype)
        self.params = {"autoencoder": ae_params} if ae_params is not None else None
        self.shift, self.scale = np.asarray(shift, np.float32), np.asarray(scale, np.float32)
        self.cache, self.cache_dir = options.cache, options.cache_dir
        self._identity = None

    @property
    def factor(self) -> int:
        return self.ae_config.downsampling_factor

    def x_shape(self, image_shape):
        h, w, c = image_shape
        f = self.factor
        if c != self.ae_config.in_channels:
            raise ConfigError(f"{self.field}: the autoencoder ({self.source}) takes "
                              f"{self.ae_config.in_channels}-channel images, but the data's have "
                              f"{c} (shape {tuple(image_shape)})")
        if h % f or w % f:
            raise ConfigError(f"{self.field}: the autoencoder ({self.source}) downsamples by "
                              f"f={f}, which must divide the image size {h}x{w}; set "
                              f"config.data.image_size to a multiple of {f}")
        return (h // f, w // f, self.ae_config.latent_channels)

    def _weights(self, params):
        if params is None:
            raise ConfigError(f"{self.field}='' names no weights: download the autoencoder "
                              f"(e.g. stabilityai/sd-vae-ft-ema) and pass its folder, "
                              f"--config.{self.field.removeprefix('config.')}=/path/to/folder")
        return {"params": params["autoencoder"]}

    def moments(self, params, images):
        """images [B, H, W, C] in [-1, 1] -> the posterior's [mean, logvar] [B, h, w, 2C]."""
        return self.module.apply(self._weights(params), images, method=self.module.encode)

    def from_moments(self, params, moments, rng=None):
        mean, logvar = posterior.split_moments(moments.astype(jnp.float32))
        z = mean if rng is None or self.options.latent == "mean" else posterior.sample(
            mean, logvar, rng)
        return posterior.normalize(z, self.shift, self.scale)

    def encode(self, params, images, rng=None):
        """images -> x; rng None: the posterior mean (validation, inpainting references)."""
        return self.from_moments(params, self.moments(params, images), rng)

    def decode(self, params, x):
        """x [B, h, w, C] -> images [B, H, W, C_img], clipped to [-1, 1]."""
        z = posterior.denormalize(x, self.shift, self.scale)
        images = self.module.apply(self._weights(params), z, method=self.module.decode)
        return jnp.clip(images.astype(jnp.float32), -1.0, 1.0)

    def encode_mask(self, mask):
        raise ConfigError(f"config.codec.name={self.name!r} cannot take inpainting masks (a "
                          f"latent pixel mixes a {self.factor}x{self.factor} patch); use "
                          f"codec.name='pixels' for --mode=inpaint")

    def identity(self) -> str:
        if self._identity is None:
            self._identity = params_hash(self.params) if self.params is not None else "none"
        return self._identity


def _check_stats_shape(stats: dict | None, image_shape, source: str, field: str) -> None:
    """A diffjax autoencoder must be used on images of the shape it was trained on."""
    if stats is None or "image_shape" not in stats:
        return
    trained = tuple(stats["image_shape"])
    if tuple(image_shape) != trained:
        raise ConfigError(f"{field}: the autoencoder ({source}) was trained on images of shape "
                          f"{trained}, but the data's are {tuple(image_shape)}; train one on "
                          f"this data or set config.data.image_size")


@CODECS.register("vae", options=VaeOptions)
def vae(options: VaeOptions, image_shape) -> VaeCodec:
    from diffjax.models.diffusers_io import load_diffusers_autoencoder

    field = "config.codec.vae.path"
    if not options.path:
        raise ConfigError(f"{field}='' is invalid: name a diffusers AutoencoderKL folder or a "
                          f"--mode=train_autoencoder workdir")
    folder = resolve_path(options.path, field)
    ae_config, params = load_diffusers_autoencoder(folder)
    stats = read_latent_stats(folder)
    _check_stats_shape(stats, image_shape, folder, field)
    shift, scale = normalization(options, ae_config, stats, "config.codec.vae")
    codec = VaeCodec(ae_config, params, shift, scale, options, folder, field)
    codec.x_shape(image_shape)
    return codec


@CODECS.register("sd_vae", options=SdVaeOptions)
def sd_vae(options: SdVaeOptions, image_shape) -> VaeCodec:
    from diffjax.models.autoencoder import SD_VAE_CONFIG, AutoencoderConfig
    from diffjax.models.diffusers_io import load_diffusers_autoencoder

    field = "config.codec.sd_vae.path"
    if options.path:
        folder = resolve_path(options.path, field)
        ae_config, params = load_diffusers_autoencoder(folder)
        if ae_config.latent_channels != 4 or ae_config.downsampling_factor != 8:
            raise ConfigError(f"{field}={options.path!r} is not Stable Diffusion's f8, "
                              f"4-channel VAE (f={ae_config.downsampling_factor}, "
                              f"{ae_config.latent_channels} channels); use codec.name='vae'")
        stats, source = read_latent_stats(folder), folder
    else:
        ae_config, params, stats = AutoencoderConfig.from_diffusers(SD_VAE_CONFIG), None, None
        source = f"stabilityai/sd-vae-{options.variant}, not loaded"
    shift, scale = normalization(options, ae_config, stats, "config.codec.sd_vae")
    codec = VaeCodec(ae_config, params, shift, scale, options, source, field)
    codec.name = "sd_vae"
    codec.x_shape(image_shape)
    return codec
