"""The KL autoencoder of latent diffusion (Rombach et al. 2022, LDM Sec. 3 and Appendix G), the
Stable Diffusion VAE, in Flax linen, layer for layer as diffusers' `AutoencoderKL`.

NHWC throughout. Submodule names follow diffusers' state-dict keys with `.N` written `_N`
(`encoder.down_blocks.0.resnets.0.norm1` is params['encoder']['down_blocks_0']['resnets_0']
['norm1']), so diffusers_io.py maps the two one to one. Params are float32; `dtype` is the
compute dtype. Norms: GroupNorm(norm_num_groups, eps=1e-6), as in diffusers' VAE blocks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.errors import ConfigError

NORM_EPS = 1e-6  # diffusers' Encoder/Decoder pass resnet_eps=1e-6 to every block.
_PAD_SAME_3x3 = ((1, 1), (1, 1))  # PyTorch padding=1
DOWN_BLOCK = "DownEncoderBlock2D"
UP_BLOCK = "UpDecoderBlock2D"

# config.json of stabilityai/sd-vae-ft-ema and sd-vae-ft-mse (the SD 1.x VAE: f8, 4 channels).
SD_VAE_CONFIG: dict = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": [DOWN_BLOCK] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "scaling_factor": 0.18215,
    "up_block_types": [UP_BLOCK] * 4,
}


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """The options of diffusers' AutoencoderKL that change its layers or latent scale.

    scaling_factor / shift_factor / latents_mean / latents_std are the latent normalisation the
    diffusion model sees, (z - shift) * scale; the network itself does not apply them.
    sample_size is informational (diffusers' tiling size)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    sample_size: int | tuple[int, ...] = 512

    def __post_init__(self):
        fix = lambda name, value: object.__setattr__(self, name, value)
        fix("block_out_channels", tuple(self.block_out_channels))
        for name in ("latents_mean", "latents_std", "sample_size"):
            if isinstance(getattr(self, name), list):
                fix(name, tuple(getattr(self, name)))
        for name in ("in_channels", "out_channels", "layers_per_block", "latent_channels"):
            _check_positive_int(name, getattr(self, name))
        _check_positive_int("norm_num_groups", self.norm_num_groups)
        if not self.block_out_channels:
            raise ConfigError("block_out_channels=(): needs at least one block width")
        for width in self.block_out_channels:
            _check_positive_int("block_out_channels", width)
            if width % self.norm_num_groups:
                raise ConfigError(
                    f"block_out_channels={self.block_out_channels}: every width must be divisible "
                    f"by norm_num_groups={self.norm_num_groups}; {width} is not"
                )
        for name in ("latents_mean", "latents_std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.latent_channels:
                raise ConfigError(
                    f"{name}={value}: needs latent_channels={self.latent_channels} entries, or None"
                )

    @property
    def downsampling_factor(self) -> int:
        """Image pixels per latent pixel along each side (8 for the SD VAE)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, config: dict) -> AutoencoderConfig:
        """The config of a diffusers AutoencoderKL config.json dict. Keys this model does not
        need (_class_name, force_upcast, _name_or_path, ...) are ignored; an act_fn other than
        silu or block types other than DownEncoderBlock2D/UpDecoderBlock2D raise ConfigError."""
        act_fn = config.get("act_fn", "silu")
        if act_fn != "silu":
            raise ConfigError(f"act_fn={act_fn!r}: only 'silu' is supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {key: value for key, value in config.items() if key in fields}
        # diffusers' own defaults where the file leaves a key out.
        kwargs.setdefault("block_out_channels", (64,))
        kwargs.setdefault("layers_per_block", 1)
        num_blocks = len(kwargs["block_out_channels"])
        for key, allowed in (("down_block_types", DOWN_BLOCK), ("up_block_types", UP_BLOCK)):
            types = list(config.get(key, [allowed] * num_blocks))
            if any(name != allowed for name in types):
                raise ConfigError(f"{key}={types}: only {allowed!r} blocks are supported")
            if len(types) != num_blocks:
                raise ConfigError(
                    f"{key}={types}: needs one entry per block_out_channels "
                    f"({num_blocks}), found {len(types)}"
                )
        return cls(**kwargs)

    def to_diffusers(self) -> dict:
        """A config.json dict that diffusers' AutoencoderKL.from_config / from_pretrained read."""
        config = {"_class_name": "AutoencoderKL", "act_fn": "silu"}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            config[field.name] = list(value) if isinstance(value, tuple) else value
        num_blocks = len(self.block_out_channels)
        config["down_block_types"] = [DOWN_BLOCK] * num_blocks
        config["up_block_types"] = [UP_BLOCK] * num_blocks
        return config


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r}: must be a positive int")


def _group_norm(config: AutoencoderConfig, dtype: Any, name: str | None = None) -> nn.GroupNorm:
    # Two-pass variance, like torch's GroupNorm.
    return nn.GroupNorm(
        num_groups=config.norm_num_groups,
        epsilon=NORM_EPS,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def _conv(features: int, kernel: int, dtype: Any, name: str | None = None, stride: int = 1):
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=_PAD_SAME_3x3 if kernel == 3 and stride == 1 else "VALID",
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class ResnetBlock(nn.Module):
    """diffusers' ResnetBlock2D without a time embedding: norm-silu-conv twice, plus the input
    (through a 1x1 conv_shortcut when the width changes). [B,H,W,C] -> [B,H,W,features]."""

    config: AutoencoderConfig
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.silu(_group_norm(self.config, self.dtype, "norm1")(x))
        h = _conv(self.features, 3, self.dtype, "conv1")(h)
        h = nn.silu(_group_norm(self.config, self.dtype, "norm2")(h))
        h = _conv(self.features, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != self.features:
            x = _conv(self.features, 1, self.dtype, "conv_shortcut")(x)
        return x + h


class AttentionBlock(nn.Module):
    """The mid block's single-head self-attention over all H*W positions (diffusers' Attention
    with group_norm and residual_connection, scale 1/sqrt(C)). [B,H,W,C] -> [B,H,W,C]."""

    config: AutoencoderConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        h = _group_norm(self.config, self.dtype, "group_norm")(x)
        h = h.reshape(batch, height * width, channels)
        dense = lambda name: nn.Dense(
            channels, dtype=self.dtype, param_dtype=jnp.float32, name=name
        )
        query, key, value = dense("to_q")(h), dense("to_k")(h), dense("to_v")(h)
        logits = jnp.einsum("bqc,bkc->bqk", query, key) / math.sqrt(channels)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        h = dense("to_out_0")(jnp.einsum("bqk,bkc->bqc", weights, value))
        return x + h.reshape(batch, height, width, channels)


class MidBlock(nn.Module):
    """diffusers' UNetMidBlock2D: resnet, attention (optional), resnet, at constant width."""

    config: AutoencoderConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        x = ResnetBlock(self.config, features, self.dtype, name="resnets_0")(x)
        if self.config.mid_block_add_attention:
            x = AttentionBlock(self.config, self.dtype, name="attentions_0")(x)
        return ResnetBlock(self.config, features, self.dtype, name="resnets_1")(x)


class Resample(nn.Module):
    """diffusers' Downsample2D(padding=0): pad bottom/right by one, then a 3x3 conv of stride 2
    ([B,H,W,C] -> [B,H/2,W/2,C]); or Upsample2D: nearest x2, then a 3x3 conv (-> [B,2H,2W,C])."""

    features: int
    down: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.down:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # torch F.pad(x, (0, 1, 0, 1))
            return _conv(self.features, 3, self.dtype, "conv", stride=2)(x)
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(self.features, 3, self.dtype, "conv")(x)


class ResnetStack(nn.Module):
    """diffusers' DownEncoderBlock2D (num_layers resnets, then Downsample2D unless last) or
    UpDecoderBlock2D (num_layers resnets, then Upsample2D unless last)."""

    config: AutoencoderConfig
    features: int
    num_layers: int
    resample: str | None  # "down", "up" or None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in range(self.num_layers):
            x = ResnetBlock(self.config, self.features, self.dtype, name=f"resnets_{layer}")(x)
        if self.resample is not None:
            name = f"{self.resample}samplers_0"
            x = Resample(self.features, self.resample == "down", self.dtype, name=name)(x)
        return x


class Encoder(nn.Module):
    """diffusers' vae.Encoder with double_z: [B,H,W,in_channels] -> [B,H/f,W/f,2*latent]."""

    config: AutoencoderConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        config, dtype = self.config, self.dtype
        widths = config.block_out_channels
        h = _conv(widths[0], 3, dtype, "conv_in")(images.astype(dtype))
        for index, width in enumerate(widths):
            resample = "down" if index < len(widths) - 1 else None
            block = ResnetStack(
                config, width, config.layers_per_block, resample, dtype, name=f"down_blocks_{index}"
            )
            h = block(h)
        h = MidBlock(config, dtype, name="mid_block")(h)
        h = nn.silu(_group_norm(config, dtype, "conv_norm_out")(h))
        return _conv(2 * config.latent_channels, 3, dtype, "conv_out")(h)


class Decoder(nn.Module):
    """diffusers' vae.Decoder, split at its last conv: `features` ends with conv_norm_out and
    SiLU ([B,h,w,latent] -> [B,H,W,block_out_channels[0]]), `output` is conv_out."""

    config: AutoencoderConfig
    dtype: Any = jnp.float32

    def setup(self):
        config, dtype = self.config, self.dtype
        widths = tuple(reversed(config.block_out_channels))
        self.conv_in = _conv(widths[0], 3, dtype)
        self.mid_block = MidBlock(config, dtype)
        num_layers = config.layers_per_block + 1
        self.up_blocks = [  # named up_blocks_0, up_blocks_1, ...
            ResnetStack(config, width, num_layers, "up" if i < len(widths) - 1 else None, dtype)
            for i, width in enumerate(widths)
        ]
        self.conv_norm_out = _group_norm(config, dtype)
        self.conv_out = _conv(config.out_channels, 3, dtype)

    def features(self, latents: jax.Array) -> jax.Array:
        h = self.mid_block(self.conv_in(latents.astype(self.dtype)))
        for block in self.up_blocks:
            h = block(h)
        return nn.silu(self.conv_norm_out(h))

    def output(self, features: jax.Array) -> jax.Array:
        return self.conv_out(features.astype(self.dtype))

    def __call__(self, latents: jax.Array) -> jax.Array:
        return self.output(self.features(latents))


class AutoencoderKL(nn.Module):
    """diffusers' AutoencoderKL in NHWC. Call methods with
    `module.apply({'params': params}, x, method=module.encode)` (likewise decode, ...)."""

    config: AutoencoderConfig
    dtype: Any = jnp.float32  # compute dtype; params stay float32

    def setup(self):
        config = self.config
        self.encoder = Encoder(config, self.dtype)
        self.decoder = Decoder(config, self.dtype)
        if config.use_quant_conv:
            self.quant_conv = _conv(2 * config.latent_channels, 1, self.dtype)
        if config.use_post_quant_conv:
            self.post_quant_conv = _conv(config.latent_channels, 1, self.dtype)

    def encode(self, images: jax.Array) -> jax.Array:
        """images: [B,H,W,in_channels] (in [-1, 1] for the SD VAE) -> moments [B,H/f,W/f,2*C]
        float32, C = latent_channels: [..., :C] the posterior mean, [..., C:] its log-variance
        (not clamped; diffusers clamps it to [-30, 20])."""
        moments = self.encoder(images)
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)
        return moments.astype(jnp.float32)

    def decode_features(self, latents: jax.Array) -> jax.Array:
        """latents: [B,h,w,latent_channels] (unscaled) -> [B,h*f,w*f,block_out_channels[0]] in
        the compute dtype: the decoder up to and including conv_norm_out and SiLU."""
        if self.config.use_post_quant_conv:
            latents = self.post_quant_conv(latents.astype(self.dtype))
        return self.decoder.features(latents)

    def decode_output(self, features: jax.Array) -> jax.Array:
        """features: decode_features' output -> images [B,H,W,out_channels] float32 (conv_out)."""
        return self.decoder.output(features).astype(jnp.float32)

    def decode(self, latents: jax.Array) -> jax.Array:
        """latents: [B,h,w,latent_channels] -> images [B,h*f,w*f,out_channels] float32."""
        return self.decode_output(self.decode_features(latents))

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images [B,H,W,in] -> (decode(posterior mean) [B,H,W,out], moments [B,h,w,2*C])."""
        moments = self.encode(images)
        return self.decode(moments[..., : self.config.latent_channels]), moments


def init_params(
    config: AutoencoderConfig, rng: jax.Array, image_shape: tuple[int, ...] = (64, 64)
) -> dict:
    """Fresh float32 params: the inner dict (no {'params': ...} wrapper), to be applied as
    `AutoencoderKL(config).apply({'params': params}, ...)`. image_shape: (H, W), (H, W, C) or
    (B, H, W, C), H and W multiples of config.downsampling_factor. Wrap in jax.eval_shape for
    shapes only."""
    height, width = image_shape[-3:-1] if len(image_shape) > 2 else image_shape
    factor = config.downsampling_factor
    if height % factor or width % factor:
        raise ConfigError(
            f"image_shape={tuple(image_shape)}: height and width must be multiples of the "
            f"downsampling factor {factor}"
        )
    images = jnp.zeros((1, height, width, config.in_channels), jnp.float32)
    return AutoencoderKL(config).init(rng, images)["params"]
