"""Codecs: the map between images and the space x the model works in. config.codec.name picks
one; its options are config.codec.<name>.

The data pipeline yields images [B, H, W, C] float32 in [-1, 1]; training encodes them, sampling
decodes x before converting to uint8. A codec provides:
  params                         a pytree (e.g. a VAE's weights; {} for pixels) passed explicitly
                                 to encode/decode, so jitted programs take it as an argument
  x_shape(image_shape)           the shape of x for one image
  bounds                         (lo, hi) that x lies in, to clip x0 predictions to; None: unbounded
  encode(params, images, rng)    images -> x;   decode(params, x) -> images in [-1, 1]
  encode_mask(mask)              a known-pixel mask [B, H, W, 1] -> a mask in x space, for
                                 inpainting; raises ConfigError where the codec cannot take one
A codec whose encoding is a deterministic map followed by a random draw (a VAE: the posterior's
moments, then z ~ q(z | x)) may set `cache`: training then stores `moments(params, images)` of the
training split once (diffjax.latent_cache) and the step calls `from_moments(moments, rng)`;
`encode_batch` picks whichever the batch carries.

Built-in codecs: pixels (here), vae and sd_vae (diffjax.codecs.vae).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from diffjax.registry import Registry

CODECS = Registry("codec", "codec.name", "codec")


class Codec:
    """The contract (see the module docstring)."""

    name: str = ""
    params: Any = {}
    bounds: tuple[float, float] | None = None

    def x_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        raise NotImplementedError

    def encode(self, params, images, rng=None):
        raise NotImplementedError

    def decode(self, params, x):
        raise NotImplementedError

    def encode_mask(self, mask):
        raise NotImplementedError

    cache: bool = False  # store `moments` of the training split once (see the module docstring)
    cache_dir: str = ""

    def moments(self, params, images):
        """The deterministic part of encode (cacheable codecs only): images -> [B, h, w, K]."""
        raise NotImplementedError

    def from_moments(self, params, moments, rng=None):
        """encode's random draw from `moments` (cacheable codecs only): -> x."""
        raise NotImplementedError

    def identity(self) -> str:
        """A string that changes whenever `moments` would (e.g. a hash of the weights)."""
        return self.name

    def encode_batch(self, params, batch: dict, rng=None):
        """x of a training batch: from its cached 'latent_moments' where the pipeline carries
        them, else encode(batch['image'])."""
        if "latent_moments" in batch:
            return self.from_moments(params, batch["latent_moments"], rng)
        return self.encode(params, batch["image"], rng)


class Pixels(Codec):
    """The identity on images in [-1, 1]: the model works on pixels, which are bounded."""

    name = "pixels"
    bounds = (-1.0, 1.0)

    def x_shape(self, image_shape):
        return tuple(image_shape)

    def encode(self, params, images, rng=None):
        return images

    def decode(self, params, x):
        return x

    def encode_mask(self, mask):
        return mask


@CODECS.register("pixels")
def pixels(options, image_shape) -> Pixels:
    del options, image_shape
    return Pixels()


def make_codec(name: str, options, image_shape) -> Codec:
    """The codec registered as `name` (options None: its defaults) for images of image_shape."""
    entry = CODECS.get(name)
    return entry.factory(options if options is not None else entry.default_options(), image_shape)


def to_uint8(images):
    """[-1, 1] float images -> uint8 [0, 255] (rounding, as DDPM's evaluation does)."""
    return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


from diffjax.codecs import vae  # noqa: E402,F401  (registers vae and sd_vae)
