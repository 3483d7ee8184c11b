"""The DDPM / ADM U-Net in Flax linen.

Follows Ho et al. 2020 (DDPM, Appendix B) with the options of Dhariwal & Nichol 2021 (ADM,
Sec. 3): multi-head attention, BigGAN-style residual up/down-sampling and adaptive group
normalisation (FiLM scale/shift from the time embedding). Layer shapes match diffusers'
`UNet2DModel`, so DDPM CIFAR-10 has exactly 35,746,307 parameters.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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
    dtype: Any = jnp.float32  # compute dtype; params are always float32

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
        labels: [B] int32 in [0, num_classes], or None for the null label (num_classes).
        Returns [B, H, W, out_channels] float32.
        """
        batch = x.shape[0]
        noise_cond = jnp.broadcast_to(jnp.asarray(noise_cond, jnp.float32), (batch,))
        temb_dim = 4 * self.ch
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32)

        # Time embedding (DDPM App. B): sinusoid(ch) -> Dense(4ch) -> swish -> Dense(4ch).
        temb = sinusoidal_embedding(noise_cond, self.ch)
        temb = nn.Dense(temb_dim, name="temb_dense0", **dense)(temb)
        temb = nn.Dense(temb_dim, name="temb_dense1", **dense)(nn.swish(temb))
        if self.num_classes > 0:
            if labels is None:
                labels = jnp.full((batch,), self.num_classes, jnp.int32)
            temb = temb + nn.Embed(self.num_classes + 1, temb_dim, name="class_embed", **dense)(
                labels
            )
        elif labels is not None:
            raise ValueError("labels were given but the UNet is unconditional (num_classes=0)")

        def res_block(out_channels: int, name: str, up: bool = False, down: bool = False):
            return ResBlock(
                out_channels,
                self.dropout,
                use_scale_shift_norm=self.use_scale_shift_norm,
                up=up,
                down=down,
                dtype=self.dtype,
                name=name,
            )

        def attn_block(channels: int, name: str):
            return AttnBlock(self._heads(channels), dtype=self.dtype, name=name)

        num_levels = len(self.ch_mult)
        h = _conv(self.ch, 3, self.dtype, name="conv_in")(x.astype(self.dtype))
        skips = [h]

        # Down path.
        for level, mult in enumerate(self.ch_mult):
            channels = self.ch * mult
            for i in range(self.num_res_blocks):
                h = res_block(channels, f"down{level}_res{i}")(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn_block(channels, f"down{level}_attn{i}")(h)
                skips.append(h)
            if level != num_levels - 1:
                if self.resblock_updown:
                    h = res_block(channels, f"down{level}_downsample", down=True)(h, temb, train)
                else:
                    h = _conv(channels, 3, self.dtype, stride=2, name=f"down{level}_downsample")(h)
                skips.append(h)

        # Middle.
        channels = h.shape[-1]
        h = res_block(channels, "mid_res0")(h, temb, train)
        h = attn_block(channels, "mid_attn")(h)
        h = res_block(channels, "mid_res1")(h, temb, train)

        # Up path: num_res_blocks + 1 blocks per level, each consuming one skip connection.
        for level in reversed(range(num_levels)):
            channels = self.ch * self.ch_mult[level]
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res_block(channels, f"up{level}_res{i}")(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn_block(channels, f"up{level}_attn{i}")(h)
            if level != 0:
                if self.resblock_updown:
                    h = res_block(channels, f"up{level}_upsample", up=True)(h, temb, train)
                else:
                    h = _conv(channels, 3, self.dtype, name=f"up{level}_upsample")(
                        _upsample_nearest(h)
                    )
        assert not skips, f"{len(skips)} unused skip connections"

        h = nn.swish(_group_norm(self.dtype, "norm_out")(h))
        h = _conv(self.out_channels, 3, self.dtype, zero_init=True, name="conv_out")(h)
        return h.astype(jnp.float32)
