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
