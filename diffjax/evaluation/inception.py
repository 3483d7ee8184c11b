"""Inception-v3, FID variant, in Flax: the TF 2015-12-05 graph as pytorch-fid reproduces it.

Differences from the torchvision Inception-v3 (pytorch-fid, inception.py, FIDInception*):
- the average pools of the A, C and first E blocks exclude the padding (count_include_pad=False);
- the last E block (Mixed_7c) pools with a max pool instead of an average pool;
- batch norm has eps=1e-3; in the TF graph it has no scale (gamma = 1).
Output: the 2048-d pool3 features (global average over the final 8x8 map) and, when the 1008-way
`fc` head is present, its logits without bias (what the Inception Score uses, as in Salimans et
al.'s code and torch-fidelity's `logits_unbiased`).

Input preprocessing (`preprocess`) turns images of any size into [B, 299, 299, 3] in [-1, 1]:
- 'pytorch_fid' (default): x / 255, bilinear resize without antialiasing as
  `F.interpolate(mode='bilinear', align_corners=False)`, then 2 x - 1 (pytorch-fid);
- 'ttur': the TF graph's own `ResizeBilinear` (align_corners=False, no half-pixel centers) on
  0..255 values, then (x - 128) / 128 (TTUR's `fid.py`, which feeds uint8-range images to the
  graph's 'ExpandDims' input).
"""

from __future__ import annotations

import functools
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
BN_EPS = 1e-3
PREPROCESSING = ("pytorch_fid", "ttur")

_conv = partial(
    jax.lax.conv_general_dilated,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=jax.lax.Precision.HIGHEST,
)


class ConvBN(nn.Module):
    """Conv (no bias) -> batch norm in inference form (x * scale + bias) -> ReLU.

    `scale` = gamma / sqrt(var + 1e-3) and `bias` = beta - mean * scale are computed by the
    weight loader; the conv kernel is kept exactly as in the reference file."""

    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features)
        )
        scale = self.param("scale", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        ph, pw = self.padding
        y = _conv(x, kernel, (self.strides, self.strides), ((ph, ph), (pw, pw)))
        return nn.relu(y * scale + bias)


def avg_pool_exclude_pad(x):
    """3x3 stride-1 average pool, padding 1, dividing by the number of real (unpadded) inputs."""
    window, strides, pad = (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
    return total / count


def max_pool(x, stride: int, padding: int):
    """3x3 max pool (padding with -inf, as torch's max_pool2d)."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pad
    )


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = ConvBN(64, (1, 1), name="branch1x1")(x)
        b5 = ConvBN(48, (1, 1), name="branch5x5_1")(x)
        b5 = ConvBN(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = ConvBN(self.pool_features, (1, 1), name="branch_pool")(avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = ConvBN(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = ConvBN(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, max_pool(x, 2, 0)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = ConvBN(192, (1, 1), name="branch1x1")(x)
        b7 = ConvBN(c7, (1, 1), name="branch7x7_1")(x)
        b7 = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = ConvBN(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = ConvBN(192, (1, 1), name="branch_pool")(avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = ConvBN(192, (1, 1), name="branch3x3_1")(x)
        b3 = ConvBN(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = ConvBN(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = ConvBN(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, max_pool(x, 2, 0)], axis=-1)


class InceptionE(nn.Module):
    """pool='avg': FIDInceptionE_1 (Mixed_7b); pool='max': FIDInceptionE_2 (Mixed_7c)."""

    pool: str

    @nn.compact
    def __call__(self, x):
        b1 = ConvBN(320, (1, 1), name="branch1x1")(x)
        b3 = ConvBN(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            -1,
        )
        bd = ConvBN(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = ConvBN(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            -1,
        )
        pooled = avg_pool_exclude_pad(x) if self.pool == "avg" else max_pool(x, 1, 1)
        bp = ConvBN(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """x: [B, 299, 299, 3] float32 in [-1, 1] (see `preprocess`) -> {'pool3': [B, 2048] float32}
    plus 'logits_unbiased': [B, 1008] when `with_head` (params then need the 'fc' entry)."""

    with_head: bool = False

    @nn.compact
    def __call__(self, x):
        x = ConvBN(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = ConvBN(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = max_pool(x, 2, 0)
        x = ConvBN(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = ConvBN(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = max_pool(x, 2, 0)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        out = {"pool3": pool3}
        if self.with_head:
            kernel = self.param(
                "fc_kernel", nn.initializers.lecun_normal(), (FEATURE_DIM, NUM_LOGITS)
            )
            out["logits_unbiased"] = jnp.dot(pool3, kernel, precision=jax.lax.Precision.HIGHEST)
        return out


def resize_matrix(in_size: int, out_size: int, mode: str) -> np.ndarray:
    """[out_size, in_size] float32 bilinear interpolation weights along one axis.

    'pytorch_fid': half-pixel centres, src = (dst + 0.5) * in / out - 0.5 clamped at 0, as
    torch's upsample_bilinear2d with align_corners=False; 'ttur': src = dst * in / out, as TF1's
    ResizeBilinear with align_corners=False. No antialiasing in either (a downscale reads only the
    two nearest inputs), and the upper neighbour is clamped to the last pixel."""
    if mode not in PREPROCESSING:
        raise ValueError(f"preprocessing={mode!r} is unknown; allowed: {', '.join(PREPROCESSING)}")
    scale = np.float32(in_size) / np.float32(out_size)  # torch and TF compute the scale in float32
    dst = np.arange(out_size, dtype=np.float32)
    if mode == "pytorch_fid":
        src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    else:
        src = dst * scale
    lower = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = (src - lower).astype(np.float32)
    weights = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, lower), 1 - frac)
    np.add.at(weights, (rows, upper), frac)
    return weights


def preprocess(images: jax.Array, mode: str = "pytorch_fid") -> jax.Array:
    """images: [B, H, W, C] uint8 in [0, 255] or float in [0, 1], C in (1, 3) ->
    [B, 299, 299, 3] float32 in [-1, 1] as the FID Inception expects (see the module docstring)."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [B, H, W, C] with C in (1, 3); got shape {images.shape}")
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    if images.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    height, width = images.shape[1:3]
    if (height, width) != (INPUT_SIZE, INPUT_SIZE):
        rows = jnp.asarray(resize_matrix(height, INPUT_SIZE, mode))
        cols = jnp.asarray(resize_matrix(width, INPUT_SIZE, mode))
        hi = jax.lax.Precision.HIGHEST
        x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=hi)
        x = jnp.einsum("pw,bowc->bopc", cols, x, precision=hi)
    if mode == "pytorch_fid":
        return 2.0 * x - 1.0
    return (x * 255.0 - 128.0) / 128.0


@functools.cache
def conv_geometry() -> dict[str, tuple[int, tuple[int, int]]]:
    """{'Mixed_5b/branch1x1': (stride, (pad_h, pad_w)), ...} for every ConvBN, read from the
    module definition (traced abstractly, nothing is computed)."""
    records: dict[str, tuple[int, tuple[int, int]]] = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, ConvBN) and context.method_name == "__call__":
            records["/".join(module.scope.path)] = (module.strides, tuple(module.padding))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(
            FIDInceptionV3().init,
            jax.random.PRNGKey(0),
            jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32),
        )
    return records
