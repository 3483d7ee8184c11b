"""A low-resolution image as conditioning (config.conditioning.name='low_res'): the network of a
super-resolution stage (SR3, Saharia et al. 2021; Cascaded Diffusion Models, Ho et al. 2021)
sees the bilinearly upsampled low-resolution image as extra input channels (any network: the
channels are appended to x by models.network.InputLabels).

Training downsamples each batch image to `size` (antialiased bilinear, as the data pipeline's
data.image_size resize makes a base model's data) and, as CDM's conditioning augmentation, adds
Gaussian noise of a level s ~ U[0, noise_max] drawn per image, telling the network s as one more
input channel. Sampling conditions on a table of low-resolution images (`with_images`: a
cascade's previous stage, --mode=upsample's input; by default the downsampled first images of
the training split) at the level `sampling_noise`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.conditioning import CONDITIONINGS, Conditioning
from diffjax.errors import ConfigError
from diffjax.options import check

DEFAULT_TABLE = 1024  # training images the default sampling table holds (cycled beyond)


def downsample(images, size: int):
    """[B, H, W, C] -> [B, size, size, C]: antialiased bilinear (PIL's BILINEAR resize)."""
    b, _, _, c = images.shape
    return jax.image.resize(images, (b, size, size, c), "linear", antialias=True)


def upsample(images, height: int, width: int):
    """[B, h, w, C] -> [B, height, width, C]: bilinear, half-pixel centres."""
    b, _, _, c = images.shape
    return jax.image.resize(images, (b, height, width, c), "linear")


@dataclasses.dataclass(frozen=True)
class LowResOptions:
    """size: the low-resolution side (e.g. 14 for a 14 -> 28 stage); noise_max: CDM's
    conditioning augmentation, the largest training noise level (std, on [-1, 1] images; 0
    disables it); sampling_noise: the level sampling conditions on (in [0, noise_max])."""

    size: int = 0
    noise_max: float = 0.0
    sampling_noise: float = 0.0
    class_conditional: bool = False  # also the class label (CDM's ImageNet stages), with
    class_dropout: float = 0.0       # dropout to the null label for guidance

    def __post_init__(self):
        check(self.size >= 0, "size", self.size,
              "must be >= 1 where used: the low-resolution side, smaller than the image")
        check(self.noise_max >= 0, "noise_max", self.noise_max, "must be >= 0 (0: no noise)")
        check(0 <= self.class_dropout < 1, "class_dropout", self.class_dropout,
              "must be in [0, 1)")
        check(0 <= self.sampling_noise <= max(self.noise_max, 0.0), "sampling_noise",
              self.sampling_noise, f"must lie in [0, noise_max={self.noise_max}], the levels "
              f"training showed the network")


@dataclasses.dataclass(frozen=True, eq=False)
class LowResImage(Conditioning):
    """cond['low_res'] [B, size, size, C] in [-1, 1] (noised) and cond['low_res_level'] [B, 1],
    plus `inner`'s (the class label where class_conditional). images: the sampling table
    [N, size, size, C] float32 in [-1, 1] (None: not set yet); labels: its class labels [N]."""

    options: LowResOptions = LowResOptions()
    channels: int = 0
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    inner: Conditioning = Conditioning()

    num_classes = property(lambda self: self.inner.num_classes)
    supports_guidance = property(lambda self: self.inner.supports_guidance)
    guidance_trained = property(lambda self: self.inner.guidance_trained)

    def bind(self, x_shape) -> LowResImage:
        height, width, channels = x_shape
        size = self.options.size
        if not 1 <= size < min(height, width):
            raise ConfigError(f"config.conditioning.low_res.size={size} is invalid: allowed "
                              f"1 to {min(height, width) - 1}, smaller than the image "
                              f"({height}x{width}) it is upsampled to (14 for a 14 -> 28 stage)")
        return dataclasses.replace(self, channels=channels)

    def input_maps(self) -> tuple[tuple[str, int], ...]:
        return (("low_res", self.channels), ("low_res_level", 1))

    def _noised(self, low, level, key):
        return low + level[:, None, None, None] * jax.random.normal(key, low.shape, low.dtype)

    def train(self, batch: dict, rng) -> dict:
        low = downsample(batch["image"], self.options.size)
        key_level, key_noise, key_inner = jax.random.split(rng, 3)
        level = self.options.noise_max * jax.random.uniform(key_level, (low.shape[0],))
        return {**self.inner.train(batch, key_inner),
                "low_res": self._noised(low, level, key_noise), "low_res_level": level[:, None]}

    def true(self, batch: dict) -> dict:
        low = downsample(batch["image"], self.options.size)
        return {**self.inner.true(batch), "low_res": low,
                "low_res_level": jnp.zeros((low.shape[0], 1), low.dtype)}

    def null(self, cond: dict) -> dict | None:
        null = self.inner.null(cond)
        if null is None:
            return None
        return {**null, "low_res": cond["low_res"], "low_res_level": cond["low_res_level"]}

    def from_labels(self, labels) -> dict:
        """labels: [B] indices into the sampling table."""
        if self.images is None:
            raise ConfigError("a low_res model samples from low-resolution images: give them "
                              "with --mode=upsample (config.sampling.low_res_input) or "
                              "config.sampling.cascade")
        low = jnp.asarray(self.images)[labels]
        inner = {}
        if self.inner.num_classes:
            inner = self.inner.from_labels(jnp.asarray(self.labels)[labels])
        level = jnp.full((low.shape[0],), self.options.sampling_noise, jnp.float32)
        # the noise of table entry i is fixed by i, so a sample depends on its input alone
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(17), i))(labels)
        noise = jax.vmap(lambda k: jax.random.normal(k, low.shape[1:], low.dtype))(keys)
        return {**inner, "low_res": low + level[:, None, None, None] * noise,
                "low_res_level": level[:, None]}

    def labels_for(self, num_samples: int, seed: int = 0, fixed: tuple = ()) -> np.ndarray:
        """Every table entry in turn (cycled where num_samples exceeds the table)."""
        count = 1 if self.images is None else len(self.images)
        return np.resize(np.arange(count, dtype=np.int32), num_samples)

    def with_images(self, images: np.ndarray, labels=None) -> LowResImage:
        """This conditioning sampling `images`: uint8 or float [N, size, size, C] (uint8 in
        0..255, float in [-1, 1]), with class labels [N] for a class-conditional stage (None:
        random ones); ConfigError for another size or channel count."""
        images = np.asarray(images)
        size, c = self.options.size, self.channels
        if images.ndim != 4 or images.shape[1:] != (size, size, c):
            raise ConfigError(f"low-resolution inputs of shape {images.shape[1:]} do not fit "
                              f"this model: it takes [N, {size}, {size}, {c}] "
                              f"(config.conditioning.low_res.size={size})")
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 127.5 - 1.0
        if labels is None:
            labels = self.inner.labels_for(len(images), 0)
        labels = np.asarray(labels, np.int32)
        if labels.shape != (len(images),):
            raise ConfigError(f"{len(images)} low-resolution inputs need as many class labels, "
                              f"got shape {labels.shape}")
        return dataclasses.replace(self, images=images.astype(np.float32), labels=labels)


@CONDITIONINGS.register("low_res", options=LowResOptions)
def low_res(options: LowResOptions, num_classes: int) -> LowResImage:
    """The table index is the sampling label; a class-conditional stage keeps the class of
    each table entry beside it."""
    inner = Conditioning()
    if options.class_conditional:
        from diffjax.conditioning import ClassLabel

        if num_classes <= 0:
            raise ConfigError("config.conditioning.low_res.class_conditional=True needs a "
                              "labelled dataset, but config.data.name has no 'label' feature")
        inner = ClassLabel(num_classes=num_classes, dropout=options.class_dropout)
    return LowResImage(options, inner=inner)
