"""The PatchGAN discriminator of pix2pix (Isola et al. 2017) as LDM's autoencoder uses it
(NLayerDiscriminator): 4x4 convolutions, LeakyReLU 0.2, one logit per overlapping patch.

One change: GroupNorm where pix2pix has BatchNorm, so a logit depends only on its own image:
batch statistics would make gradient accumulation differ from the big batch and need mutable
state in the train step."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


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
