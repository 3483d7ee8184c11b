"""Discriminators: the PatchGAN of pix2pix (Isola et al. 2017) as LDM's autoencoder uses it
(NLayerDiscriminator: 4x4 convolutions, LeakyReLU 0.2, one logit per overlapping patch), and
DDGAN's time-conditioned discriminator of denoising pairs.

One change to the PatchGAN: GroupNorm where pix2pix has BatchNorm, so a logit depends only on
its own image: batch statistics would make gradient accumulation differ from the big batch and
need mutable state in the train step."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.unet import sinusoidal_embedding


class PatchDiscriminator(nn.Module):
    """images [B, H, W, C] in [-1, 1] -> patch logits [B, h, w, 1] float32.

    num_layers stride-2 convolutions (channels, 2x, 4x, ... capped at 8x), then one stride-1
    convolution and the 1-channel output, as NLayerDiscriminator(n_layers=num_layers)."""

    channels: int = 64
    num_layers: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        init = nn.initializers.normal(0.02)  # pix2pix / LDM weights_init
        conv = lambda ch, stride, bias, name: nn.Conv(  # noqa: E731
            ch, (4, 4), strides=stride, padding=1, use_bias=bias, kernel_init=init,
            dtype=self.dtype, param_dtype=jnp.float32, name=name)
        norm = lambda ch, name: nn.GroupNorm(  # noqa: E731
            num_groups=min(32, ch), dtype=self.dtype, param_dtype=jnp.float32, name=name)
        h = nn.leaky_relu(conv(self.channels, 2, True, "conv0")(images.astype(self.dtype)), 0.2)
        for n in range(1, self.num_layers + 1):
            ch = self.channels * min(2**n, 8)
            stride = 2 if n < self.num_layers else 1
            h = conv(ch, stride, False, f"conv{n}")(h)
            h = nn.leaky_relu(norm(ch, f"norm{n}")(h), 0.2)
        return conv(1, 1, True, "conv_out")(h).astype(jnp.float32)


class TimeConditionedDiscriminator(nn.Module):
    """DDGAN's discriminator D(x_{t-1}, x_t, t) (Xiao et al. 2022, App. C), smaller: the pair
    concatenated on channels [B, H, W, 2C], a 3x3 convolution, then num_layers residual blocks
    (LeakyReLU 0.2, conv, + the time embedding, LeakyReLU, stride-2 conv; a 1x1 stride-2 skip;
    summed and divided by sqrt 2), channels x2 per block capped at 8x, and a linear logit of the
    spatially summed features. The time embedding: sinusoid(t_cond) -> Dense -> LeakyReLU ->
    Dense, as DDGAN's. No normalisation and no minibatch-std layer (it couples the examples of
    a batch, so gradient accumulation would change the loss).

    x_prev, x_t: [B, H, W, C]; t_cond: [B] float (the generator's c_noise). Returns [B]
    float32 logits."""

    channels: int = 64
    num_layers: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_prev: jax.Array, x_t: jax.Array, t_cond: jax.Array) -> jax.Array:
        act = lambda h: nn.leaky_relu(h, 0.2)  # noqa: E731
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
        conv = lambda ch, k, stride, name: nn.Conv(  # noqa: E731
            ch, (k, k), strides=stride, padding="SAME", name=name, **dense)
        temb_dim = 4 * self.channels
        temb = nn.Dense(temb_dim, name="temb_dense0", **dense)(
            sinusoidal_embedding(jnp.asarray(t_cond, jnp.float32), self.channels))
        temb = act(nn.Dense(temb_dim, name="temb_dense1", **dense)(act(temb)))
        h = jnp.concatenate([x_prev, x_t], axis=-1).astype(self.dtype)
        h = conv(self.channels, 3, 1, "conv_in")(h)
        for n in range(self.num_layers):
            ch = self.channels * min(2 ** (n + 1), 8)
            skip = conv(ch, 1, 2, f"block{n}_skip")(h)
            h = conv(ch, 3, 1, f"block{n}_conv0")(act(h))
            h = h + nn.Dense(ch, name=f"block{n}_temb", **dense)(temb)[:, None, None, :]
            h = conv(ch, 3, 2, f"block{n}_conv1")(act(h))
            h = (h + skip) / jnp.sqrt(2.0).astype(h.dtype)
        h = jnp.sum(act(h).astype(jnp.float32), axis=(1, 2))
        return nn.Dense(1, name="logit", param_dtype=jnp.float32)(h)[:, 0]
