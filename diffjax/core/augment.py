"""Leak-free geometric augmentation (EDM's AugmentPipe, Karras et al. 2022, App. F.2): random
affine transforms of the training images whose parameters the network is told, as a label
vector that is exactly zero for the identity, so sampling with zero labels asks for
un-augmented images.

Each enabled transform is applied to an example with probability p, independently (EDM):
  xflip      x -> -x
  translate  by an integer number of pixels, uniform in [-max_translate, max_translate] * size
  scale      isotropic, 2^(scale_std N(0, 1))
  rotate     by an angle uniform in [-max_rotate, max_rotate] * pi
  aniso      x by 2^(aniso_std N(0, 1)), y by its inverse
composed in that order about the image centre, and resampled once, bilinearly, with mirrored
padding. Labels [B, NUM_LABELS]: xflip, tx / W, ty / H, log2 scale, sin(theta),
cos(theta) - 1, log2 aniso. Bilinear resampling does not low-pass a downscale as EDM's
wavelet filters do; integer translations and flips are exact.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

TRANSFORMS = ("xflip", "translate", "scale", "rotate", "aniso")
NUM_LABELS = 7
MAX_TRANSLATE = 0.125  # EDM's translate_int_max
SCALE_STD = 0.2        # EDM's scale_std
MAX_ROTATE = 1.0       # EDM's rotate_frac_max (of pi)
ANISO_STD = 0.2        # EDM's aniso_std


def identity_params(batch: int) -> dict:
    """The parameters of the identity transform for `batch` examples: {name: [B] float32}."""
    z = jnp.zeros((batch,), jnp.float32)
    return {"xflip": z, "tx": z, "ty": z, "log2_scale": z, "theta": z, "log2_aniso": z}


def sample_params(key, batch: int, height: int, width: int, p: float,
                  transforms: tuple[str, ...] = TRANSFORMS) -> dict:
    """Random transform parameters, each enabled transform on with probability p; the others
    at their identity values. {name: [B] float32} (tx, ty in whole pixels)."""
    unknown = set(transforms) - set(TRANSFORMS)
    if unknown:
        raise ValueError(f"unknown transforms {sorted(unknown)}; allowed: {TRANSFORMS}")
    keys = jax.random.split(key, 2 * len(TRANSFORMS) + 1)
    params = identity_params(batch)

    def on(i):
        return jax.random.uniform(keys[2 * i], (batch,)) < p

    def uniform(i, shape=(batch,)):
        return jax.random.uniform(keys[2 * i + 1], shape, minval=-1.0, maxval=1.0)

    for i, name in enumerate(TRANSFORMS):
        if name not in transforms:
            continue
        mask = on(i)
        if name == "xflip":
            params["xflip"] = mask.astype(jnp.float32)
        elif name == "translate":
            u = uniform(i, (2, batch))
            tx = jnp.round(u[0] * MAX_TRANSLATE * width)
            ty = jnp.round(u[1] * MAX_TRANSLATE * height)
            params["tx"], params["ty"] = jnp.where(mask, tx, 0.0), jnp.where(mask, ty, 0.0)
        elif name == "scale":
            s = SCALE_STD * jax.random.normal(keys[2 * i + 1], (batch,))
            params["log2_scale"] = jnp.where(mask, s, 0.0)
        elif name == "rotate":
            params["theta"] = jnp.where(mask, uniform(i) * MAX_ROTATE * math.pi, 0.0)
        elif name == "aniso":
            a = ANISO_STD * jax.random.normal(keys[2 * i + 1], (batch,))
            params["log2_aniso"] = jnp.where(mask, a, 0.0)
    return params


def labels(params: dict, height: int, width: int) -> jax.Array:
    """The network's augmentation labels [B, NUM_LABELS] (translation as a fraction of the
    image size), zero exactly for the identity."""
    theta = params["theta"]
    return jnp.stack([params["xflip"], params["tx"] / width, params["ty"] / height,
                      params["log2_scale"], jnp.sin(theta), jnp.cos(theta) - 1.0,
                      params["log2_aniso"]], axis=-1)


def inverse_matrix(params: dict) -> jax.Array:
    """[B, 3, 3]: the map from output to input pixel coordinates (x = column, y = row, both
    about the image centre) of the forward transform aniso . rotate . scale . translate . xflip."""
    flip = 1.0 - 2.0 * params["xflip"]
    s, a = jnp.exp2(-params["log2_scale"]), jnp.exp2(-params["log2_aniso"])
    c, sn = jnp.cos(params["theta"]), jnp.sin(params["theta"])
    zero, one = jnp.zeros_like(c), jnp.ones_like(c)

    def mat(rows):
        return jnp.stack([jnp.stack(r, -1) for r in rows], -2)

    # Inverses in reverse order: xflip^-1 translate^-1 scale^-1 rotate^-1 aniso^-1.
    a_inv = mat([[a, zero, zero], [zero, 1.0 / a, zero], [zero, zero, one]])
    r_inv = mat([[c, sn, zero], [-sn, c, zero], [zero, zero, one]])
    s_inv = mat([[s, zero, zero], [zero, s, zero], [zero, zero, one]])
    t_inv = mat([[one, zero, -params["tx"]], [zero, one, -params["ty"]], [zero, zero, one]])
    f_inv = mat([[flip, zero, zero], [zero, one, zero], [zero, zero, one]])
    return f_inv @ t_inv @ s_inv @ r_inv @ a_inv


def warp(images: jax.Array, inverse: jax.Array) -> jax.Array:
    """images [B, H, W, C] resampled bilinearly at inverse @ (output pixel), mirrored at the
    borders. inverse: [B, 3, 3] (inverse_matrix). Returns [B, H, W, C] float32."""
    _, h, w, _ = images.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy,
                              jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")
    grid = jnp.stack([cols, rows, jnp.ones_like(rows)], 0).reshape(3, -1)

    def one(image, m):
        src = m @ grid
        coords = [(src[1] + cy).reshape(h, w), (src[0] + cx).reshape(h, w)]
        channel = lambda x: jax.scipy.ndimage.map_coordinates(x, coords, order=1, mode="mirror")
        return jax.vmap(channel, in_axes=-1, out_axes=-1)(image)

    return jax.vmap(one)(images.astype(jnp.float32), inverse)


def augment(images: jax.Array, key, p: float,
            transforms: tuple[str, ...] = TRANSFORMS) -> tuple[jax.Array, jax.Array]:
    """images [B, H, W, C] -> (augmented images [B, H, W, C], labels [B, NUM_LABELS])."""
    b, h, w, _ = images.shape
    params = sample_params(key, b, h, w, p, transforms)
    return warp(images, inverse_matrix(params)), labels(params, h, w)
