"""The DDPM / ADM U-Net in Flax linen.

Follows Ho et al. 2020 (DDPM, Appendix B) with the options of Dhariwal & Nichol 2021 (ADM,
Sec. 3): multi-head attention, BigGAN-style residual up/down-sampling and adaptive group
normalisation (FiLM scale/shift from the time embedding). Layer shapes match diffusers'
`UNet2DModel`, so DDPM CIFAR-10 has exactly 35,746,307 parameters.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models import text
from diffjax.models.network import DTYPES, LinenNetwork, NetworkSpec, text_init_cond
from diffjax.models.registry import NETWORKS
from diffjax.options import OptionError, check, int_tuple

NORM_GROUPS = 32
NORM_EPS = 1e-5  # PyTorch GroupNorm default, as in DDPM/ADM/diffusers.
_PAD_SAME_3x3 = ((1, 1), (1, 1))  # PyTorch padding=1, symmetric also for stride 2.


def sinusoidal_embedding(noise_cond: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Transformer sinusoidal embedding (ADM's `timestep_embedding`, cos first).

    noise_cond: [B] float. Returns [B, dim] float32.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = noise_cond.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def _group_norm(dtype: Any, name: str | None = None) -> nn.GroupNorm:
    return nn.GroupNorm(
        num_groups=NORM_GROUPS, epsilon=NORM_EPS, dtype=dtype, param_dtype=jnp.float32, name=name
    )


def _conv(
    features: int,
    kernel: int,
    dtype: Any,
    stride: int = 1,
    zero_init: bool = False,
    name: str | None = None,
) -> nn.Conv:
    pad = _PAD_SAME_3x3 if kernel == 3 else "VALID"
    extra = {"kernel_init": nn.initializers.zeros} if zero_init else {}
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=pad,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
        **extra,
    )


def _upsample_nearest(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, 2H, 2W, C], nearest neighbour."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _downsample_avg(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H/2, W/2, C], 2x2 average pooling."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ResBlock(nn.Module):
    """Residual block: GN, swish, conv3x3, +temb, GN, swish, dropout, conv3x3, + skip.

    With `up`/`down` it also resamples (ADM's BigGAN-style block, no conv on the skip path).
    With `use_scale_shift_norm` the time embedding gives (scale, shift) applied after the 2nd
    GroupNorm: h = GN(h) * (1 + scale) + shift (ADM Sec. 3, "AdaGN").
    """

    out_channels: int
    dropout: float
    use_scale_shift_norm: bool = False
    up: bool = False
    down: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
        """x: [B, H, W, Cin]; temb: [B, E]. Returns [B, H', W', out_channels]."""
        h = nn.swish(_group_norm(self.dtype, "norm1")(x))
        if self.up:
            h, x = _upsample_nearest(h), _upsample_nearest(x)
        elif self.down:
            h, x = _downsample_avg(h), _downsample_avg(x)
        h = _conv(self.out_channels, 3, self.dtype, name="conv1")(h)

        emb_features = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
        emb = nn.Dense(emb_features, dtype=self.dtype, param_dtype=jnp.float32, name="temb_proj")(
            nn.swish(temb)
        )[:, None, None, :]
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(emb, 2, axis=-1)
            h = _group_norm(self.dtype, "norm2")(h) * (1 + scale) + shift
        else:
            h = _group_norm(self.dtype, "norm2")(h + emb)
        h = nn.swish(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = _conv(self.out_channels, 3, self.dtype, zero_init=True, name="conv2")(h)

        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, self.dtype, name="skip")(x)
        return x + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over all pixels: GN, q/k/v (1x1, bias), softmax, out, residual."""

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C]. Returns [B, H, W, C]."""
        batch, height, width, channels = x.shape
        if channels % self.num_heads:
            raise ValueError(
                f"attention channels {channels} not divisible by {self.num_heads} heads"
            )
        head_dim = channels // self.num_heads
        h = _group_norm(self.dtype, "norm")(x).reshape(batch, height * width, channels)

        def project(name: str) -> jax.Array:
            out = nn.Dense(channels, dtype=self.dtype, param_dtype=jnp.float32, name=name)(h)
            return out.reshape(batch, height * width, self.num_heads, head_dim)

        q, k, v = project("q"), project("k"), project("v")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, height * width, channels)
        out = nn.Dense(
            channels,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.zeros,
            name="out",
        )(out)
        return x + out.reshape(batch, height, width, channels)


class UNet(nn.Module):
    """ADM/DDPM U-Net: [B, H, W, C] image + [B] noise level (+ [B] label) -> [B, H, W, out].

    Param names: conv_in, temb_dense{0,1}, class_embed, down{level}_{res,attn}{i},
    down{level}_downsample, mid_{res0,attn,res1}, up{level}_{res,attn}{i}, up{level}_upsample,
    norm_out, conv_out.
    """

    out_channels: int  # channels of the output (= image channels)
    ch: int = 128  # base channels
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)  # spatial sizes (height) with self-attention
    dropout: float = 0.1
    num_heads: int = 1  # attention heads (used when head_channels <= 0)
    head_channels: int = -1  # if > 0, heads = channels // head_channels (ADM)
    num_classes: int = 0  # 0: unconditional; >0: label num_classes is the null label (CFG)
    resblock_updown: bool = False  # ADM: down/upsample inside residual blocks
    use_scale_shift_norm: bool = False  # ADM: FiLM (scale, shift) from the time embedding
    augment_dim: int = 0  # EDM: augmentation labels embedded with the noise level (0: none)
    dtype: Any = jnp.float32  # compute dtype; params are always float32
    text: Any = None  # a models.text.TextSpec: cross-attention to text after each self-attention

    def _heads(self, channels: int) -> int:
        return channels // self.head_channels if self.head_channels > 0 else self.num_heads

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        noise_cond: jax.Array,
        labels: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        """Predict the network output for a noisy image.

        x: [B, H, W, C] in [-1, 1]-ish. noise_cond: [B] float (e.g. DDPM timestep as float).
        labels: [B] int32 in [0, num_classes], or None for the null label (num_classes); with
        `text`, the cond dict {'tokens': [B, L], 'mask': [B, L]} (LDM-style cross-attention).
        Returns [B, H, W, out_channels] float32.
        """
        context, augment = None, None
        if self.augment_dim:  # the whole cond dict: its labels and augmentation labels
            cond = labels or {}
            augment = cond.get("augment")
            labels = cond if self.text is not None else cond.get("label")
        if self.text is not None:
            context = text.encode_context(self.text, self.dtype, labels)
            labels = None
        temb = self._embedding(noise_cond, labels, x.shape[0], augment)
        h = _conv(self.ch, 3, self.dtype, name="conv_in")(x.astype(self.dtype))
        h, skips = self._down(h, temb, train, context)
        channels = h.shape[-1]
        h = self._res(channels, "mid_res0")(h, temb, train)
        h = self._attend(h, channels, "mid_attn", context)
        h = self._res(channels, "mid_res1")(h, temb, train)
        h = self._up(h, skips, temb, train, context)
        h = nn.swish(_group_norm(self.dtype, "norm_out")(h))
        h = _conv(self.out_channels, 3, self.dtype, zero_init=True, name="conv_out")(h)
        return h.astype(jnp.float32)

    def _embedding(self, noise_cond, labels, batch: int, augment=None) -> jax.Array:
        """Time embedding (DDPM App. B): sinusoid(ch) -> Dense(4ch) -> swish -> Dense(4ch),
        plus the class embedding (num_classes + 1 rows, the last the null label). [B, 4 ch].
        A tuple of noise inputs (MeanFlow's (t, t - r)) gets one such embedding each (the k-th
        named temb{k}_dense*), summed, as MeanFlow's networks embed t and t - r. A latent input
        [B, D] (DDGAN's z) skips the sinusoid: Dense -> swish -> Dense, a mapping network whose
        output modulates every residual block with the time embedding. With augment_dim, the
        augmentation labels [B, augment_dim] (zeros: none) are mapped linearly, without bias,
        onto the first sinusoid (EDM's map_augment)."""
        inputs = noise_cond if isinstance(noise_cond, (tuple, list)) else (noise_cond,)
        temb_dim = 4 * self.ch
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
        temb = 0.0
        for k, value in enumerate(inputs):
            prefix = "temb" if k == 0 else f"temb{k}"
            value = jnp.asarray(value, jnp.float32)
            if value.ndim == 2:
                features = value
            else:
                features = sinusoidal_embedding(jnp.broadcast_to(value, (batch,)), self.ch)
            if k == 0 and self.augment_dim:
                if augment is None:
                    augment = jnp.zeros((batch, self.augment_dim), jnp.float32)
                features = features + nn.Dense(features.shape[-1], use_bias=False,
                                               name="augment_embed", **dense)(
                    jnp.asarray(augment, jnp.float32))
            h = nn.Dense(temb_dim, name=f"{prefix}_dense0", **dense)(features)
            temb = temb + nn.Dense(temb_dim, name=f"{prefix}_dense1", **dense)(nn.swish(h))
        if self.num_classes > 0:
            if labels is None:
                labels = jnp.full((batch,), self.num_classes, jnp.int32)
            temb = temb + nn.Embed(self.num_classes + 1, temb_dim, name="class_embed", **dense)(
                labels
            )
        elif labels is not None:
            raise ValueError("labels were given but the UNet is unconditional (num_classes=0)")
        return temb

    def _res(self, out_channels: int, name: str, up: bool = False, down: bool = False):
        return ResBlock(out_channels, self.dropout, use_scale_shift_norm=self.use_scale_shift_norm,
                        up=up, down=down, dtype=self.dtype, name=name)

    def _attend(self, h, channels: int, name: str, context):
        """Self-attention, then (with text) cross-attention to the context, residually."""
        h = AttnBlock(self._heads(channels), dtype=self.dtype, name=name)(h)
        if context is None:
            return h
        batch, height, width, _ = h.shape
        out = text.CrossAttention(self._heads(channels), self.dtype, name=f"{name}_cross")(
            h.reshape(batch, height * width, channels), *context)
        return h + out.reshape(h.shape)

    def _down(self, h, temb, train: bool, context=None):
        """The down path: (h at the lowest resolution, the skip connections)."""
        skips = [h]
        for level, mult in enumerate(self.ch_mult):
            channels = self.ch * mult
            for i in range(self.num_res_blocks):
                h = self._res(channels, f"down{level}_res{i}")(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = self._attend(h, channels, f"down{level}_attn{i}", context)
                skips.append(h)
            if level != len(self.ch_mult) - 1:
                if self.resblock_updown:
                    h = self._res(channels, f"down{level}_downsample", down=True)(h, temb, train)
                else:
                    h = _conv(channels, 3, self.dtype, stride=2, name=f"down{level}_downsample")(h)
                skips.append(h)
        return h, skips

    def _up(self, h, skips: list, temb, train: bool, context=None):
        """The up path: num_res_blocks + 1 blocks per level, each consuming one skip."""
        for level in reversed(range(len(self.ch_mult))):
            channels = self.ch * self.ch_mult[level]
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = self._res(channels, f"up{level}_res{i}")(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = self._attend(h, channels, f"up{level}_attn{i}", context)
            if level != 0:
                if self.resblock_updown:
                    h = self._res(channels, f"up{level}_upsample", up=True)(h, temb, train)
                else:
                    h = _conv(channels, 3, self.dtype, name=f"up{level}_upsample")(
                        _upsample_nearest(h)
                    )
        assert not skips, f"{len(skips)} unused skip connections"
        return h


# ---------------------------------------------------------------------------------------------
# Options (config.model.unet) and the registered factory.


@dataclasses.dataclass(frozen=True)
class UNetOptions:
    """ch: base channels (a multiple of the 32 GroupNorm groups); ch_mult: channels per level
    (each level but the last halves the image); num_res_blocks per level; attn_resolutions: the
    heights with self-attention; num_heads, or head_channels > 0 (heads = channels //
    head_channels, ADM); resblock_updown and use_scale_shift_norm: ADM's options; learn_sigma:
    also output iDDPM's variance v of C channels (extra output 'variance', eq. 15), as DiT's."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_heads: int = 1
    head_channels: int = -1
    resblock_updown: bool = False
    use_scale_shift_norm: bool = False
    learn_sigma: bool = False

    def __post_init__(self):
        check(isinstance(self.ch, int) and self.ch > 0 and not self.ch % NORM_GROUPS, "ch",
              self.ch, f"must be a positive multiple of {NORM_GROUPS} (GroupNorm uses "
              f"{NORM_GROUPS} groups), e.g. 64, 128, 192, 256")
        ch_mult = int_tuple("ch_mult", self.ch_mult)
        check(bool(ch_mult) and all(m >= 1 for m in ch_mult), "ch_mult", ch_mult,
              "must be a non-empty tuple of ints >= 1")
        int_tuple("attn_resolutions", self.attn_resolutions)
        check(isinstance(self.num_res_blocks, int) and self.num_res_blocks >= 1,
              "num_res_blocks", self.num_res_blocks, "must be an int >= 1")
        for key in ("num_heads", "head_channels"):
            check(isinstance(getattr(self, key), int), key, getattr(self, key), "must be an int")
        check(self.head_channels > 0 or self.num_heads >= 1, "num_heads", self.num_heads,
              "must be >= 1 when head_channels <= 0")
        check(isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0, "dropout",
              self.dropout, "must be in [0, 1)")
        check(isinstance(self.learn_sigma, bool), "learn_sigma", self.learn_sigma,
              "must be a bool")


def check_unet_fits(options: UNetOptions, x_shape: tuple[int, int, int]) -> None:
    """Checks the U-Net's levels and attention against the input shape (H, W, C); raises
    OptionError naming the field."""
    height, width, _ = x_shape
    if height != width:
        raise OptionError("ch_mult", options.ch_mult, f"needs square inputs: x has shape "
                          f"{tuple(x_shape)}; the U-Net's attn_resolutions are heights")
    levels = len(options.ch_mult)
    factor = 2 ** (levels - 1)
    sizes = [height / 2**level for level in range(levels)]
    if height % factor:
        shown = " -> ".join(f"{s:g}" for s in sizes)
        raise OptionError(
            "ch_mult", options.ch_mult, f"has {levels} levels, so the image is halved "
            f"{levels - 1} times and its size must be divisible by 2**{levels - 1}={factor}; "
            f"input size {height} (x has shape {tuple(x_shape)}, the codec's space) would give "
            f"level sizes {shown}. Allowed sizes are multiples of {factor} "
            f"({', '.join(str(factor * k) for k in range(1, 5))}, ...); otherwise use fewer "
            f"levels in ch_mult")
    level_sizes = [int(s) for s in sizes]
    for res in options.attn_resolutions:
        check(res in level_sizes, "attn_resolutions", tuple(options.attn_resolutions),
              f"contains {res}, which never occurs for {height}x{width} images with ch_mult="
              f"{tuple(options.ch_mult)}; the level resolutions are {level_sizes}")
    # The middle block always has attention, at the last level's channels.
    attn_channels = {options.ch * options.ch_mult[-1]} | {
        options.ch * mult for mult, size in zip(options.ch_mult, level_sizes, strict=True)
        if size in options.attn_resolutions}
    for channels in sorted(attn_channels):
        if options.head_channels > 0:
            check(not channels % options.head_channels, "head_channels", options.head_channels,
                  f"does not divide the {channels} channels of an attention layer (attention "
                  f"channels: {sorted(attn_channels)})")
        else:
            check(not channels % options.num_heads, "num_heads", options.num_heads,
                  f"does not divide the {channels} channels of an attention layer (attention "
                  f"channels: {sorted(attn_channels)})")


@NETWORKS.register("unet", options=UNetOptions)
def build_unet(options: UNetOptions, spec: NetworkSpec) -> LinenNetwork:
    """The DDPM/ADM U-Net for inputs of spec.x_shape, predicting as many channels (plus a
    variance of as many with learn_sigma), with a class embedding (num_classes + 1 rows, the
    last the null label) when spec.num_classes > 0."""
    check_unet_fits(options, spec.x_shape)
    channels = spec.x_shape[-1]
    extras = {"extra_outputs": (("variance", channels),)} if options.learn_sigma else {}
    module = UNet(out_channels=2 * channels if options.learn_sigma else channels, ch=options.ch,
                  ch_mult=tuple(options.ch_mult), num_res_blocks=options.num_res_blocks,
                  attn_resolutions=tuple(options.attn_resolutions),
                  dropout=float(options.dropout), num_heads=options.num_heads,
                  head_channels=options.head_channels, num_classes=spec.num_classes,
                  resblock_updown=bool(options.resblock_updown),
                  use_scale_shift_norm=bool(options.use_scale_shift_norm),
                  dtype=DTYPES[spec.compute_dtype], text=spec.text,
                  augment_dim=spec.augment_dim)
    if spec.augment_dim:
        extras["embedded"] = ("augment",)
    if spec.text is not None or spec.augment_dim:  # the module takes the whole cond dict
        return LinenNetwork(module=module, x_shape=tuple(spec.x_shape),
                            out_channels=channels, cond_key=None,
                            init_cond=text_init_cond(spec.text) if spec.text else None, **extras,
                            num_noise_inputs=spec.num_noise_inputs, latent_dim=spec.latent_dim,
                            stochastic=options.dropout > 0)
    return LinenNetwork(module=module, x_shape=tuple(spec.x_shape),
                        out_channels=channels, num_noise_inputs=spec.num_noise_inputs, **extras,
                        latent_dim=spec.latent_dim, stochastic=options.dropout > 0)
