"""EDM2's magnitude-preserving U-Net (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", config G), in Flax linen.

Follows NVlabs/edm2 `training/networks_edm2.py` layer by layer, with its module names:
- the MP layers as small pure functions: `normalize`, `mp_silu` (eq. 81), `mp_sum` (eq. 88),
  `mp_cat` (eq. 103), `mp_fourier` (eq. 75) and `MPConv` (eq. 47), a convolution or dense layer
  whose weight is normalised to unit magnitude per output channel in the forward pass and scaled
  by gain / sqrt(fan_in); no biases, no normalisation layers;
- `Block` (Fig. 21): encoder blocks pixel-normalise their input, decoder blocks take the skip
  concatenation; the embedding modulates the residual branch by 1 + MPConv(emb, gain=emb_gain)
  (emb_gain starts at 0), the branches join with mp_sum(t=res_balance 0.3), self-attention with
  pixel-normalised (cosine) q, k, v joins with mp_sum(t=attn_balance 0.3), activations are
  clipped to +-clip_act (256);
- `UNet`: MP Fourier features of c_noise -> MPConv, plus the class embedding (an MPConv of the
  one-hot label times sqrt(num_classes)) by mp_sum(t=label_balance 0.5), then mp_silu; an input
  channel of ones; skips joined by mp_cat(t=concat_balance 0.5); the output MPConv has a learned
  gain `out_gain` that starts at 0, so the network outputs exactly 0 at init.

The network outputs EDM's raw F: the 'edm' parameterization supplies c_in, c_skip, c_out and
EDM2's c_noise = ln(sigma) / 4. Labels run over [0, num_classes]; the null label num_classes
(classifier-free guidance, see models/network.py) is the zero one-hot, EDM2's unconditional
input (its Precond feeds zeros when class_labels is None).

Forced weight normalisation (EDM2 eq. 66): the forward pass normalises every MPConv weight (so
the function is magnitude-preserving whatever the stored scale), and, as EDM2's training
overwrites the stored weight with normalize(w) at each step, the network's `project_params`
(which the train step calls after each optimizer update) does the same, so Adam's updates keep
their relative size instead of shrinking as the norms grow (EDM2 Sec. 2.5). Weights start as
normalize(N(0, 1)) (EDM2: N(0, 1), normalised at the first training forward pass).
forced_weight_norm=False leaves the stored weights alone.

What differs from EDM2: layouts are NHWC / HWIO (the weight of an MPConv is normalised over all
axes but its last, the output channel); the Fourier features' fixed frequencies and phases are
constants drawn from a fixed numpy seed rather than per-run buffers.

Sizes (EDM2 Table 2, ImageNet-512 on 64x64x4 latents, 1000 classes): XS 125M, S 280M, M 498M,
L 777M, XL 1119M, XXL 1523M; this module counts 124,713,125 / 280,212,709 / 497,807,653 /
777,497,957 / 1,119,283,621 / 1,523,164,645, EDM2's UNet shape for shape (tests/test_edm2.py;
its Precond adds the 128 weights of the uncertainty head, here objectives/edm2.py's).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.network import DTYPES, LinenNetwork, NetworkSpec
from diffjax.models.registry import NETWORKS
from diffjax.options import OptionError, check, choice, int_tuple

# EDM2 train_edm2.py config_presets 'edm2-img512-<size>': (model_channels, dropout).
EDM2_PRESETS = {"xxs": (64, 0.0), "xs": (128, 0.0), "s": (192, 0.0), "m": (256, 0.1),
                "l": (320, 0.1), "xl": (384, 0.1), "xxl": (448, 0.1)}
MP_SILU_SCALE = 0.596  # E[silu(x)^2]^(1/2) for x ~ N(0, 1) (EDM2 eq. 81)


# ---------------------------------------------------------------------------------------------
# Magnitude-preserving layers (EDM2 Sec. 3, Appendix B.2).


def normalize(x: jax.Array, axis=None, eps: float = 1e-4) -> jax.Array:
    """x / (eps + ||x|| / sqrt(N)), the norm over `axis` (N its number of elements), so each
    slice has unit root-mean-square. axis None: all axes but the last (per output channel of a
    [..., in, out] weight). Computed in float32, returned in x's dtype."""
    if axis is None:
        axis = tuple(range(x.ndim - 1))
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    size = math.prod(x.shape[a] for a in axis)
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axis, keepdims=True))
    return x / (eps + norm / np.sqrt(size)).astype(x.dtype)


def mp_silu(x: jax.Array) -> jax.Array:
    """silu(x) / 0.596: unit second moment for x ~ N(0, 1) (EDM2 eq. 81)."""
    return jax.nn.silu(x) / MP_SILU_SCALE


def mp_sum(a: jax.Array, b: jax.Array, t: float = 0.5) -> jax.Array:
    """lerp(a, b, t) / sqrt((1 - t)^2 + t^2): unit magnitude for independent unit inputs
    (EDM2 eq. 88)."""
    return (a + t * (b - a)) / np.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a: jax.Array, b: jax.Array, axis: int = -1, t: float = 0.5) -> jax.Array:
    """Concatenation along `axis` with a weighted a * (1 - t) C / sqrt(Na) and b * t C / sqrt(Nb),
    C = sqrt((Na + Nb) / ((1 - t)^2 + t^2)) (EDM2 eq. 103): unit magnitude overall, and b's
    share of it set by t."""
    na, nb = a.shape[axis], b.shape[axis]
    scale = np.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
    wa, wb = scale / np.sqrt(na) * (1 - t), scale / np.sqrt(nb) * t
    return jnp.concatenate([wa * a, wb * b], axis=axis)


def fourier_constants(num_channels: int, seed: int, bandwidth: float = 1.0):
    """MPFourier's fixed buffers: frequencies 2 pi N(0, bandwidth^2) and phases 2 pi U[0, 1),
    [num_channels] float32 each, from numpy seed `seed`."""
    rng = np.random.RandomState(seed)
    freqs = 2 * np.pi * rng.randn(num_channels) * bandwidth
    phases = 2 * np.pi * rng.rand(num_channels)
    return freqs.astype(np.float32), phases.astype(np.float32)


def mp_fourier(x: jax.Array, freqs, phases) -> jax.Array:
    """sqrt(2) cos(2 pi f x + phi): x [B] -> [B, C] float32 of unit second moment over the random
    phases (EDM2 eq. 75)."""
    y = jnp.asarray(x, jnp.float32)[:, None] * jnp.asarray(freqs)[None] + jnp.asarray(phases)
    return jnp.cos(y) * np.sqrt(2)


def mp_weight(weight: jax.Array, gain=1.0) -> jax.Array:
    """The effective weight of an MPConv: normalize(weight) * gain / sqrt(fan_in), fan_in the
    product of all axes but the last; unit norm per output channel at gain 1, whatever the
    stored weight's scale (EDM2 eqs. 47, 66)."""
    fan_in = math.prod(weight.shape[:-1])
    return normalize(weight.astype(jnp.float32)) * (gain / np.sqrt(fan_in))


def project_weights(params):
    """EDM2's forced weight normalisation (eq. 66, `self.weight.copy_(normalize(w))`): every
    MPConv weight (a leaf named 'weight') replaced by normalize(weight); gains untouched. For a
    train step to call on the network's params after each update."""
    def project(path, leaf):
        name = getattr(path[-1], "key", None)
        return normalize(leaf) if name == "weight" and leaf.ndim >= 2 else leaf

    return jax.tree_util.tree_map_with_path(project, params)


def _normalized_normal(key, shape, dtype=jnp.float32):
    """normalize(N(0, 1)): EDM2's randn init after its first forced normalisation."""
    return normalize(jax.random.normal(key, shape, dtype))


class MPConv(nn.Module):
    """EDM2's MPConv: kernel () is a dense layer, (k, k) a 'same'-padded convolution; no bias.
    x: [..., C_in] (dense) or [B, H, W, C_in] -> [..., out_channels]."""

    out_channels: int
    kernel: tuple[int, ...] = ()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, gain=1.0) -> jax.Array:
        shape = (*self.kernel, x.shape[-1], self.out_channels)
        weight = self.param("weight", _normalized_normal, shape, jnp.float32)
        w = mp_weight(weight, gain).astype(self.dtype)
        x = x.astype(self.dtype)
        if not self.kernel:
            return x @ w
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))


def resample(x: jax.Array, mode: str) -> jax.Array:
    """EDM2's resample with its [1, 1] filter: 'down' is 2x2 average pooling, 'up' nearest
    2x upsampling, 'keep' the identity. x: [B, H, W, C]."""
    if mode == "keep":
        return x
    batch, height, width, channels = x.shape
    if mode == "down":
        return x.reshape(batch, height // 2, 2, width // 2, 2, channels).mean(axis=(2, 4))
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


# ---------------------------------------------------------------------------------------------
# The U-Net (EDM2 Fig. 21).


class Block(nn.Module):
    """EDM2's Block: flavor 'enc' or 'dec', resample 'keep' | 'down' | 'up', optional
    self-attention of out_channels // channels_per_head heads. x: [B, H, W, C_in], emb:
    [B, C_emb] -> [B, H', W', out_channels]."""

    out_channels: int
    flavor: str = "enc"
    resample_mode: str = "keep"
    attention: bool = False
    channels_per_head: int = 64
    dropout: float = 0.0
    res_balance: float = 0.3
    attn_balance: float = 0.3
    clip_act: float = 256.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
        out, dt = self.out_channels, self.dtype
        skip = MPConv(out, (1, 1), dt, name="conv_skip") if x.shape[-1] != out else None
        emb_gain = self.param("emb_gain", nn.initializers.zeros, (), jnp.float32)
        # Main branch.
        x = resample(x, self.resample_mode)
        if self.flavor == "enc":
            if skip is not None:
                x = skip(x)
            x = normalize(x, axis=-1)  # pixel norm
        # Residual branch.
        y = MPConv(out, (3, 3), dt, name="conv_res0")(mp_silu(x))
        c = MPConv(out, (), dt, name="emb_linear")(emb, gain=emb_gain) + 1
        y = mp_silu(y * c[:, None, None, :].astype(y.dtype))
        if train and self.dropout > 0:
            y = nn.Dropout(self.dropout, deterministic=False)(y)
        y = MPConv(out, (3, 3), dt, name="conv_res1")(y)
        # Connect the branches.
        if self.flavor == "dec" and skip is not None:
            x = skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        # Self-attention: cosine attention of pixel-normalised q, k, v.
        if self.attention:
            heads = out // self.channels_per_head
            batch, height, width, _ = x.shape
            y = MPConv(3 * out, (1, 1), dt, name="attn_qkv")(x)
            # EDM2: reshape(N, heads, C/heads, 3, HW): channels ordered (head, channel, q/k/v).
            y = normalize(y.reshape(batch, height * width, heads, out // heads, 3), axis=3)
            q, k, v = y[..., 0], y[..., 1], y[..., 2]  # [B, HW, heads, C/heads]
            logits = jnp.einsum("bqhc,bkhc->bhqk", q, k / np.sqrt(q.shape[-1]))
            w = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
            y = jnp.einsum("bhqk,bkhc->bqhc", w, v).reshape(batch, height, width, out)
            x = mp_sum(x, MPConv(out, (1, 1), dt, name="attn_proj")(y), t=self.attn_balance)
        if self.clip_act > 0:
            x = jnp.clip(x, -self.clip_act, self.clip_act)
        return x


class EDM2UNet(nn.Module):
    """EDM2's UNet: [B, H, W, C] + c_noise [B] (+ labels [B] int32 in [0, num_classes]) ->
    F [B, H, W, C] float32. Module names follow EDM2's: emb_noise, emb_label,
    enc_{res}x{res}_{conv|down|block<i>}, dec_{res}x{res}_{in0|in1|up|block<i>}, out_conv, with
    the learned out_gain."""

    out_channels: int
    model_channels: int = 192
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    channel_mult_noise: int = 0  # 0: channel_mult[0]
    channel_mult_emb: int = 0  # 0: max(channel_mult)
    num_blocks: int = 3
    attn_resolutions: tuple[int, ...] = (16, 8)
    label_balance: float = 0.5
    concat_balance: float = 0.5
    num_classes: int = 0
    channels_per_head: int = 64
    dropout: float = 0.0
    res_balance: float = 0.3
    attn_balance: float = 0.3
    clip_act: float = 256.0
    fourier_seed: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, noise_cond, labels=None, train: bool = False) -> jax.Array:
        if isinstance(noise_cond, (tuple, list)):
            raise ValueError("the EDM2 U-Net takes one noise input (EDM2's c_noise = ln(sigma)"
                             "/4); use a one-time parameterization such as 'edm'")
        batch, resolution = x.shape[0], x.shape[1]
        mc = self.model_channels
        cblock = [mc * m for m in self.channel_mult]
        cnoise = mc * self.channel_mult_noise if self.channel_mult_noise else cblock[0]
        cemb = mc * self.channel_mult_emb if self.channel_mult_emb else max(cblock)
        block = dict(channels_per_head=self.channels_per_head, dropout=self.dropout,
                     res_balance=self.res_balance, attn_balance=self.attn_balance,
                     clip_act=self.clip_act, dtype=self.dtype)

        # Embedding.
        noise = jnp.broadcast_to(jnp.asarray(noise_cond, jnp.float32), (batch,))
        emb = MPConv(cemb, (), self.dtype, name="emb_noise")(
            mp_fourier(noise, *fourier_constants(cnoise, self.fourier_seed)))
        if self.num_classes > 0:
            if labels is None:
                labels = jnp.full((batch,), self.num_classes, jnp.int32)
            one_hot = jax.nn.one_hot(labels, self.num_classes)  # the null label: zeros
            emb_label = MPConv(cemb, (), self.dtype, name="emb_label")(
                one_hot * np.sqrt(self.num_classes))
            emb = mp_sum(emb, emb_label, t=self.label_balance)
        elif labels is not None:
            raise ValueError("labels were given but the EDM2 U-Net is unconditional "
                             "(num_classes=0)")
        emb = mp_silu(emb)

        # Encoder.
        h = jnp.concatenate([x, jnp.ones_like(x[..., :1])], axis=-1).astype(self.dtype)
        skips = []
        for level, channels in enumerate(cblock):
            res = resolution >> level
            if level == 0:
                h = MPConv(channels, (3, 3), self.dtype, name=f"enc_{res}x{res}_conv")(h)
            else:
                h = Block(h.shape[-1], "enc", "down", **block,
                          name=f"enc_{res}x{res}_down")(h, emb, train)
            skips.append(h)
            for idx in range(self.num_blocks):
                h = Block(channels, "enc", attention=res in self.attn_resolutions, **block,
                          name=f"enc_{res}x{res}_block{idx}")(h, emb, train)
                skips.append(h)

        # Decoder.
        for level, channels in reversed(list(enumerate(cblock))):
            res = resolution >> level
            if level == len(cblock) - 1:
                h = Block(h.shape[-1], "dec", attention=True, **block,
                          name=f"dec_{res}x{res}_in0")(h, emb, train)
                h = Block(h.shape[-1], "dec", **block, name=f"dec_{res}x{res}_in1")(h, emb,
                                                                                     train)
            else:
                h = Block(h.shape[-1], "dec", "up", **block, name=f"dec_{res}x{res}_up")(
                    h, emb, train)
            for idx in range(self.num_blocks + 1):
                h = mp_cat(h, skips.pop(), t=self.concat_balance)
                h = Block(channels, "dec", attention=res in self.attn_resolutions, **block,
                          name=f"dec_{res}x{res}_block{idx}")(h, emb, train)
        out_gain = self.param("out_gain", nn.initializers.zeros, (), jnp.float32)
        h = MPConv(self.out_channels, (3, 3), self.dtype, name="out_conv")(h, gain=out_gain)
        return h.astype(jnp.float32)


class LogvarHead(nn.Module):
    """EDM2's uncertainty u(sigma) (Precond's logvar_fourier + logvar_linear, eq. 21): MP
    Fourier features of c_noise = ln(sigma) / 4 -> MPConv(channels -> 1). c_noise: [B] ->
    logvar [B] float32."""

    channels: int = 128
    fourier_seed: int = 1

    @nn.compact
    def __call__(self, c_noise: jax.Array) -> jax.Array:
        features = mp_fourier(c_noise, *fourier_constants(self.channels, self.fourier_seed))
        return MPConv(1, (), name="logvar_linear")(features)[:, 0]


# ---------------------------------------------------------------------------------------------
# Options (config.model.edm2) and the registered factory.


@dataclasses.dataclass(frozen=True)
class EDM2Options:
    """preset: EDM2's ImageNet-512 size ('xxs', 'xs', 's', 'm', 'l', 'xl', 'xxl'), which sets
    model_channels (64 .. 448) and dropout (0 up to s, 0.1 from m); model_channels > 0 and
    dropout >= 0 override it; channel_mult: per level (each level but the first halves the
    image); channel_mult_noise, channel_mult_emb: the noise-Fourier and embedding widths over
    model_channels (0: channel_mult[0] and max(channel_mult), EDM2's None); num_blocks per level;
    attn_resolutions: the heights with self-attention (the innermost decoder block always has
    it); channels_per_head; label_balance, concat_balance, res_balance, attn_balance: the t of
    mp_sum / mp_cat at those joins; clip_act: the activation clip (0: none); fourier_seed: the
    numpy seed of the noise embedding's frequencies and phases; forced_weight_norm: project the
    stored weights to unit magnitude after each update (EDM2 eq. 66)."""

    preset: str = "s"
    model_channels: int = 0
    dropout: float = -1.0
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    channel_mult_noise: int = 0
    channel_mult_emb: int = 0
    num_blocks: int = 3
    attn_resolutions: tuple[int, ...] = (16, 8)
    channels_per_head: int = 64
    label_balance: float = 0.5
    concat_balance: float = 0.5
    res_balance: float = 0.3
    attn_balance: float = 0.3
    clip_act: float = 256.0
    fourier_seed: int = 0
    forced_weight_norm: bool = True

    def __post_init__(self):
        choice("preset", self.preset, tuple(EDM2_PRESETS))
        for key in ("model_channels", "channel_mult_noise", "channel_mult_emb"):
            value = getattr(self, key)
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 0, key,
                  value, "must be an int >= 0 (0: the default)")
        mult = int_tuple("channel_mult", self.channel_mult)
        check(bool(mult) and all(m >= 1 for m in mult), "channel_mult", mult,
              "must be a non-empty tuple of ints >= 1")
        int_tuple("attn_resolutions", self.attn_resolutions)
        check(isinstance(self.num_blocks, int) and self.num_blocks >= 1, "num_blocks",
              self.num_blocks, "must be an int >= 1")
        check(isinstance(self.channels_per_head, int) and self.channels_per_head >= 1,
              "channels_per_head", self.channels_per_head, "must be an int >= 1")
        check(self.dropout < 1.0, "dropout", self.dropout,
              "must be < 1 (< 0: the preset's, 0 or 0.1)")
        for key in ("label_balance", "concat_balance", "res_balance", "attn_balance"):
            value = getattr(self, key)
            check(0.0 <= value <= 1.0, key, value, "must be in [0, 1]")
        check(self.clip_act >= 0, "clip_act", self.clip_act, "must be >= 0 (0: no clipping)")
        check(isinstance(self.forced_weight_norm, bool), "forced_weight_norm",
              self.forced_weight_norm, "must be a bool")

    def resolved(self) -> tuple[int, float]:
        """(model_channels, dropout) of the preset with the overrides applied."""
        channels, dropout = EDM2_PRESETS[self.preset]
        return (self.model_channels or channels,
                float(self.dropout) if self.dropout >= 0 else dropout)


def check_edm2_fits(options: EDM2Options, x_shape) -> None:
    """The levels, attention resolutions and heads against x_shape (H, W, C); OptionError naming
    the field."""
    height, width, _ = x_shape
    levels = len(options.channel_mult)
    if height != width:
        raise OptionError("channel_mult", options.channel_mult,
                          f"needs square inputs: x has shape {tuple(x_shape)}")
    sizes = [height >> level for level in range(levels)]
    if height % 2 ** (levels - 1):
        raise OptionError("channel_mult", options.channel_mult,
                          f"has {levels} levels, so the image is halved {levels - 1} times: its "
                          f"size {height} must be divisible by {2 ** (levels - 1)}")
    for res in options.attn_resolutions:
        check(res in sizes, "attn_resolutions", tuple(options.attn_resolutions),
              f"contains {res}, which never occurs for {height}x{width} inputs with "
              f"channel_mult={tuple(options.channel_mult)}; the level resolutions are {sizes}")
    channels, _ = options.resolved()
    attn = {channels * options.channel_mult[-1]} | {
        channels * m for m, s in zip(options.channel_mult, sizes, strict=True)
        if s in options.attn_resolutions}
    for c in sorted(attn):
        check(not c % options.channels_per_head, "channels_per_head", options.channels_per_head,
              f"does not divide the {c} channels of an attention block (attention channels: "
              f"{sorted(attn)})")


@dataclasses.dataclass(frozen=True)
class EDM2Network(LinenNetwork):
    """The EDM2 U-Net behind the network contract, with forced weight normalisation as its
    project_params (see the module docstring)."""

    forced_weight_norm: bool = True

    def project_params(self, params):
        return project_weights(params) if self.forced_weight_norm else params


@NETWORKS.register("edm2", options=EDM2Options)
def build_edm2(options: EDM2Options, spec: NetworkSpec) -> EDM2Network:
    """EDM2's U-Net for inputs of spec.x_shape, predicting as many channels, with the class
    embedding when spec.num_classes > 0 (the null label: the zero one-hot)."""
    if spec.text is not None:
        raise OptionError("preset", options.preset, "is a class-conditional network; the "
                          "EDM2 U-Net has no text cross-attention (use model.name='unet' or "
                          "'dit' with text)")
    if spec.num_noise_inputs != 1 or spec.latent_dim:
        raise OptionError("preset", options.preset, "takes one noise input (EDM2's c_noise); "
                          "the parameterization gives "
                          f"{spec.num_noise_inputs} (latent_dim {spec.latent_dim})")
    check_edm2_fits(options, spec.x_shape)
    channels, dropout = options.resolved()
    module = EDM2UNet(out_channels=spec.x_shape[-1], model_channels=channels,
                      channel_mult=tuple(options.channel_mult),
                      channel_mult_noise=options.channel_mult_noise,
                      channel_mult_emb=options.channel_mult_emb, num_blocks=options.num_blocks,
                      attn_resolutions=tuple(options.attn_resolutions),
                      label_balance=float(options.label_balance),
                      concat_balance=float(options.concat_balance),
                      num_classes=spec.num_classes, channels_per_head=options.channels_per_head,
                      dropout=dropout, res_balance=float(options.res_balance),
                      attn_balance=float(options.attn_balance),
                      clip_act=float(options.clip_act), fourier_seed=options.fourier_seed,
                      dtype=DTYPES[spec.compute_dtype])
    return EDM2Network(module=module, x_shape=tuple(spec.x_shape),
                       out_channels=spec.x_shape[-1], stochastic=dropout > 0,
                       forced_weight_norm=options.forced_weight_norm)
