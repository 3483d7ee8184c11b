"""DiT: the Diffusion Transformer of Peebles & Xie 2023 ("Scalable Diffusion Models with
Transformers"), in Flax linen.

Follows facebookresearch/DiT `models.py` layer by layer, with its parameter names: a p x p patch
embedding (`x_embedder`) plus a fixed 2-D sin-cos position embedding, a timestep embedder
(`t_embedder`: 256 sinusoidal frequencies -> MLP) and a label embedder (`y_embedder`, one extra
row for the null label of classifier-free guidance), `depth` adaLN-Zero blocks (`blocks_i`) and a
final adaLN layer (`final_layer`) that unpatchifies to [B, H, W, out]. Initialisation is DiT's
`initialize_weights`, so the network outputs exactly zero at init. DiT-XL/2 on 32x32x4 latents
with 1000 classes and a learned sigma has 674,834,720 trained parameters (675,129,632 with the
fixed position embedding, the paper's count) and 118.6 Gflops (the paper's Table 4 counts one
multiply-add as one flop; see diffjax/models/flops.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models import text
from diffjax.models.network import DTYPES, LinenNetwork, NetworkSpec, text_init_cond
from diffjax.models.registry import NETWORKS
from diffjax.models.unet import sinusoidal_embedding
from diffjax.options import OptionError, check, choice

# name: (depth, hidden_size, num_heads), DiT's models.py (DiT_S_2 ... DiT_XL_8).
DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
DIT_PATCH_SIZES = (2, 4, 8)
DIT_SIZE_NAMES = tuple(f"{s}/{p}" for s in DIT_SIZES for p in DIT_PATCH_SIZES)
FREQUENCY_EMBEDDING_SIZE = 256  # DiT's TimestepEmbedder.frequency_embedding_size
NORM_EPS = 1e-6  # DiT's LayerNorm(elementwise_affine=False, eps=1e-6)
ATTENTION = ("xla", "cudnn", "auto")

_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros
_normal_002 = nn.initializers.normal(stddev=0.02)
# DiT: xavier_uniform_ of the conv weight viewed as [D, p*p*C]: fan_in p*p*C, fan_out D.
_patch_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2),
                                               out_axis=-1)


def sincos_pos_embed_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """DiT's (MAE's) get_1d_sincos_pos_embed_from_grid: pos [M] -> [M, embed_dim], the first
    half sin(pos * omega), the second cos(pos * omega), omega_k = 1 / 10000**(k / (D/2))."""
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """DiT's get_2d_sincos_pos_embed: [grid_size**2, embed_dim] float32 for the tokens in
    row-major order. DiT builds the grid with np.meshgrid(grid_w, grid_h), so its grid[0] (the
    half it calls emb_h) is the column (w) coordinate: token (h, w) gets [1-D embedding of w,
    1-D embedding of h], each of embed_dim / 2."""
    coords = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(coords, coords), axis=0)  # grid[0][h, w] = w, grid[1][h, w] = h
    emb = np.concatenate([sincos_pos_embed_1d(embed_dim // 2, grid[0]),
                          sincos_pos_embed_1d(embed_dim // 2, grid[1])], axis=1)
    return emb.astype(np.float32)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """DiT's modulate: x [B, N, D] * (1 + scale [B, D]) + shift [B, D]."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def _dense(features: int, dtype: Any, name: str, kernel_init=_xavier, bias_init=_zeros):
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                    bias_init=bias_init, name=name)


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=NORM_EPS, use_bias=False, use_scale=False, dtype=dtype,
                        param_dtype=jnp.float32, name=name)


def attention_implementation(attention: str, dtype: Any, head_dim: int) -> str:
    """The jax.nn.dot_product_attention implementation for the `attention` option: 'auto' is
    cuDNN flash attention on GPU backends when it applies (bf16/fp16, head_dim a multiple of 8
    and <= 128), else XLA. cuDNN's attention has a custom VJP and no JVP, so objectives that
    differentiate the network with jax.jvp (consistency, MeanFlow) must use 'xla'."""
    if attention != "auto":
        return attention
    fits = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 \
        and head_dim <= 128
    return "cudnn" if fits and jax.default_backend() == "gpu" else "xla"


class Attention(nn.Module):
    """timm's Attention as DiT uses it: one fused qkv Dense (bias), softmax(q k^T / sqrt(d)) v
    per head, an output Dense. x: [B, N, D] -> [B, N, D]."""

    num_heads: int
    attention: str = "xla"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, tokens, hidden = x.shape
        head_dim = hidden // self.num_heads
        qkv = _dense(3 * hidden, self.dtype, "qkv")(x)
        # timm: qkv.reshape(B, N, 3, heads, head_dim); jax wants [B, N, heads, head_dim] each.
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        impl = attention_implementation(self.attention, self.dtype, head_dim)
        out = jax.nn.dot_product_attention(q, k, v, implementation=impl)
        return _dense(hidden, self.dtype, "proj")(out.reshape(batch, tokens, hidden))


class Mlp(nn.Module):
    """timm's Mlp: Dense(D -> hidden_features), GELU (tanh approximation), Dense(-> D)."""

    hidden_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.gelu(_dense(self.hidden_features, self.dtype, "fc1")(x), approximate=True)
        return _dense(x.shape[-1], self.dtype, "fc2")(h)


class DiTBlock(nn.Module):
    """DiT's adaLN-Zero block: c gives (shift, scale, gate) for the attention and the MLP; the
    modulation Dense is zero at init, so the block starts as the identity. With a text context
    [B, L, Dc] and its mask [B, L], cross-attention follows the self-attention (PixArt-alpha,
    Chen et al. 2024, Sec. 2.3; its output layer is zero at init too).
    x: [B, N, D], c: [B, D] -> [B, N, D]."""

    num_heads: int
    mlp_ratio: float = 4.0
    attention: str = "xla"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array, context=None, mask=None) -> jax.Array:
        hidden = x.shape[-1]
        modulation = _dense(6 * hidden, self.dtype, "adaLN_modulation", _zeros)(nn.silu(c))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(
            modulation, 6, axis=-1)
        h = modulate(_layer_norm(self.dtype, "norm1")(x), shift_msa, scale_msa)
        x = x + gate_msa[:, None, :] * Attention(self.num_heads, self.attention, self.dtype,
                                                 name="attn")(h)
        if context is not None:
            x = x + text.CrossAttention(self.num_heads, self.dtype, name="cross_attn")(
                x, context, mask)
        h = modulate(_layer_norm(self.dtype, "norm2")(x), shift_mlp, scale_mlp)
        mlp = Mlp(int(hidden * self.mlp_ratio), self.dtype, name="mlp")
        return x + gate_mlp[:, None, :] * mlp(h)


class FinalLayer(nn.Module):
    """DiT's final layer: adaLN (shift, scale) of a LayerNorm, then Dense(D -> p*p*out), both
    zero at init. x: [B, N, D], c: [B, D] -> [B, N, p*p*out]."""

    patch_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        modulation = _dense(2 * x.shape[-1], self.dtype, "adaLN_modulation", _zeros)(nn.silu(c))
        shift, scale = jnp.split(modulation, 2, axis=-1)
        x = modulate(_layer_norm(self.dtype, "norm_final")(x), shift, scale)
        return _dense(self.patch_features, self.dtype, "linear", _zeros)(x)


class TimestepEmbedder(nn.Module):
    """DiT's TimestepEmbedder: 256 sinusoidal frequencies of noise_cond (cat([cos, sin]),
    max_period 10000, as ADM's) -> Dense(D), SiLU, Dense(D); weights N(0, 0.02^2).
    noise_cond: [B] (or a scalar) -> [B, D]; a latent [B, D_z] (DDGAN's z) skips the sinusoid."""

    hidden_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, noise_cond: jax.Array, batch: int) -> jax.Array:
        noise_cond = jnp.asarray(noise_cond, jnp.float32)
        if noise_cond.ndim == 2:
            freqs = noise_cond
        else:
            freqs = sinusoidal_embedding(jnp.broadcast_to(noise_cond, (batch,)),
                                         FREQUENCY_EMBEDDING_SIZE)
        h = _dense(self.hidden_size, self.dtype, "mlp_0", _normal_002)(freqs)
        return _dense(self.hidden_size, self.dtype, "mlp_2", _normal_002)(nn.silu(h))


class LabelEmbedder(nn.Module):
    """DiT's LabelEmbedder: a table of num_classes + 1 rows, N(0, 0.02^2); the last row is the
    null label of classifier-free guidance. The conditioning plug-in drops labels (DiT's
    token_drop); the network never does. labels: [B] int32 in [0, num_classes] -> [B, D]."""

    num_classes: int
    hidden_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, labels: jax.Array) -> jax.Array:
        table = nn.Embed(self.num_classes + 1, self.hidden_size, dtype=self.dtype,
                         param_dtype=jnp.float32, embedding_init=_normal_002,
                         name="embedding_table")
        return table(labels)


class DiT(nn.Module):
    """DiT: [B, H, W, C] + [B] noise conditioning (+ [B] labels) -> [B, H, W, out_channels].

    Param names follow DiT's state dict: x_embedder, t_embedder/{mlp_0, mlp_2},
    y_embedder/embedding_table, blocks_{i}/{adaLN_modulation, attn/{qkv, proj}, mlp/{fc1, fc2}},
    final_layer/{adaLN_modulation, linear}.
    """

    out_channels: int  # all output channels (2 C with a learned sigma)
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 0  # 0: unconditional; > 0: label num_classes is the null label (CFG)
    attention: str = "xla"  # see attention_implementation
    remat: bool = False  # recompute each block's activations in the backward pass
    dtype: Any = jnp.float32  # compute dtype; params are always float32
    text: Any = None  # a models.text.TextSpec: cross-attention to text in every block

    @nn.compact
    def __call__(self, x: jax.Array, noise_cond: jax.Array, labels: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        """x: [B, H, W, C]; noise_cond: [B] float (c_noise; DiT feeds integer timesteps up to
        1000); labels: [B] int32 in [0, num_classes] or None (the null label). Returns
        [B, H, W, out_channels] float32. `train` is accepted for the contract; DiT has no
        dropout. With `text`, labels is the cond dict {'tokens', 'mask'} [B, L]."""
        context = mask = None
        if self.text is not None:
            context, mask = text.encode_context(self.text, self.dtype, labels)
            labels = None
        batch, height, width, _ = x.shape
        p = self.patch_size
        if height != width or height % p:
            raise ValueError(f"DiT needs square inputs whose side the patch size {p} divides; "
                             f"x has shape {x.shape}")
        tokens = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID",
                         dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_patch_init,
                         bias_init=_zeros, name="x_embedder")(x.astype(self.dtype))
        grid_h, grid_w = tokens.shape[1:3]
        pos_embed = jnp.asarray(sincos_pos_embed_2d(self.hidden_size, grid_h))  # a constant
        h = tokens.reshape(batch, grid_h * grid_w, self.hidden_size) + pos_embed.astype(
            self.dtype)
        c = self._conditioning(noise_cond, labels, batch)
        block = nn.remat(DiTBlock) if self.remat else DiTBlock
        for i in range(self.depth):
            h = block(self.num_heads, self.mlp_ratio, self.attention, self.dtype,
                      name=f"blocks_{i}")(h, c, context, mask)
        h = FinalLayer(p * p * self.out_channels, self.dtype, name="final_layer")(h, c)
        return unpatchify(h.astype(jnp.float32), p, grid_h, grid_w)

    def _conditioning(self, noise_cond, labels, batch: int) -> jax.Array:
        """c = t_embedder(noise_cond) + y_embedder(labels): [B, D]. A tuple of noise inputs
        (MeanFlow's (t, t - r)) gets one embedder each (t_embedder, t_embedder1, ...), summed."""
        inputs = noise_cond if isinstance(noise_cond, (tuple, list)) else (noise_cond,)
        c = sum(TimestepEmbedder(self.hidden_size, self.dtype,
                                 name="t_embedder" if k == 0 else f"t_embedder{k}")(value, batch)
                for k, value in enumerate(inputs))
        if self.num_classes > 0:
            if labels is None:
                labels = jnp.full((batch,), self.num_classes, jnp.int32)
            c = c + LabelEmbedder(self.num_classes, self.hidden_size, self.dtype,
                                  name="y_embedder")(labels)
        elif labels is not None:
            raise ValueError("labels were given but the DiT is unconditional (num_classes=0)")
        return c


def unpatchify(x: jax.Array, patch_size: int, grid_h: int, grid_w: int) -> jax.Array:
    """DiT's unpatchify: [B, N, p*p*C] (per token in (p, q, C) order) -> [B, H, W, C]."""
    batch, p = x.shape[0], patch_size
    channels = x.shape[-1] // (p * p)
    x = x.reshape(batch, grid_h, grid_w, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, grid_h * p, grid_w * p, channels)


# ---------------------------------------------------------------------------------------------
# Options (config.model.dit) and the registered factory.


@dataclasses.dataclass(frozen=True)
class DiTOptions:
    """size: a name of DiT's table, '<S|B|L|XL>/<patch 2|4|8>'; depth, hidden_size, num_heads
    and patch_size override it (0: the size's value); mlp_ratio: MLP width / hidden_size;
    learn_sigma: also output a variance of C channels (DiT's learned Sigma, IDDPM); attention:
    'xla', 'cudnn' (bfloat16 only; no JVP) or 'auto' (cuDNN on GPU where it applies); remat:
    recompute each block's activations in the backward pass (less memory, ~1/3 more compute)."""

    size: str = "S/2"
    depth: int = 0
    hidden_size: int = 0
    num_heads: int = 0
    patch_size: int = 0
    mlp_ratio: float = 4.0
    learn_sigma: bool = False
    attention: str = "xla"
    remat: bool = False

    def __post_init__(self):
        choice("size", self.size, DIT_SIZE_NAMES)
        for key in ("depth", "hidden_size", "num_heads", "patch_size"):
            value = getattr(self, key)
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 0, key,
                  value, f"must be an int >= 0 (0: the value of size={self.size!r})")
        check(isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0, "mlp_ratio",
              self.mlp_ratio, "must be > 0")
        check(isinstance(self.learn_sigma, bool), "learn_sigma", self.learn_sigma,
              "must be a bool")
        check(isinstance(self.remat, bool), "remat", self.remat, "must be a bool")
        choice("attention", self.attention, ATTENTION)
        _, hidden, heads, _ = self.resolved()
        check(hidden % 4 == 0, "hidden_size", hidden, "must be a multiple of 4 (the 2-D sin-cos "
              "position embedding gives each axis hidden_size / 2 sin and cos features)")
        check(hidden % heads == 0, "num_heads", heads, f"does not divide hidden_size={hidden} "
              f"(head dimension = hidden_size / num_heads)")

    def resolved(self) -> tuple[int, int, int, int]:
        """(depth, hidden_size, num_heads, patch_size) of `size` with the overrides applied."""
        name, patch = self.size.split("/")
        depth, hidden, heads = DIT_SIZES[name]
        return (self.depth or depth, self.hidden_size or hidden, self.num_heads or heads,
                self.patch_size or int(patch))


def check_dit_fits(options: DiTOptions, spec: NetworkSpec) -> None:
    """Checks the patch size against spec.x_shape (H, W, C) and the attention option against the
    compute dtype; raises OptionError naming the field."""
    height, width, _ = spec.x_shape
    _, hidden, heads, patch = options.resolved()
    field = "patch_size" if options.patch_size else "size"
    value = options.patch_size or options.size
    if height != width:
        raise OptionError(field, value, f"needs square inputs (DiT's position embedding is a "
                          f"square grid): x_shape={tuple(spec.x_shape)}")
    if height % patch:
        allowed = [q for q in range(1, height + 1) if height % q == 0]
        what = "does not" if options.patch_size else f"has patch size {patch}, which does not"
        raise OptionError(field, value, f"{what} divide the height and width of x_shape="
                          f"{tuple(spec.x_shape)}; patch sizes that do: "
                          f"{', '.join(map(str, allowed))}")
    if options.attention == "cudnn":
        check(spec.compute_dtype == "bfloat16", "attention", options.attention,
              f"needs compute_dtype='bfloat16' (cuDNN flash attention has no float32 kernel); "
              f"compute_dtype is {spec.compute_dtype!r}")
        head_dim = hidden // heads
        check(head_dim % 8 == 0 and head_dim <= 256, "attention", options.attention,
              f"needs a head dimension that is a multiple of 8 and <= 256; hidden_size / "
              f"num_heads = {head_dim}")


@NETWORKS.register("dit", options=DiTOptions)
def build_dit(options: DiTOptions, spec: NetworkSpec) -> LinenNetwork:
    """DiT for inputs of spec.x_shape, predicting as many channels (plus a variance of as many
    with learn_sigma), with a label embedding (num_classes + 1 rows) when spec.num_classes > 0.
    The fixed position embedding's num_patches * hidden_size scalars are num_fixed_scalars."""
    check_dit_fits(options, spec)
    depth, hidden, heads, patch = options.resolved()
    channels = spec.x_shape[-1]
    module = DiT(out_channels=2 * channels if options.learn_sigma else channels,
                 patch_size=patch, hidden_size=hidden, depth=depth, num_heads=heads,
                 mlp_ratio=float(options.mlp_ratio), num_classes=spec.num_classes,
                 attention=options.attention, remat=options.remat,
                 dtype=DTYPES[spec.compute_dtype], text=spec.text)
    num_patches = (spec.x_shape[0] // patch) * (spec.x_shape[1] // patch)
    return LinenNetwork(module=module, x_shape=tuple(spec.x_shape), out_channels=channels,
                        extra_outputs=(("variance", channels),) if options.learn_sigma else (),
                        num_fixed_scalars=num_patches * hidden,
                        num_noise_inputs=spec.num_noise_inputs, latent_dim=spec.latent_dim,
                        stochastic=False,
                        **({} if spec.text is None else
                           {"cond_key": None, "init_cond": text_init_cond(spec.text)}))
