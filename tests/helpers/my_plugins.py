"""Parts defined outside diffjax, as a researcher's own module would: a network, a sampler, an
objective with its own trained group and state, and a codec. Importing this module registers
them; a config file that imports it picks them by name (see plugin_config.py)."""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from diffjax.codecs import CODECS, Codec
from diffjax.errors import ConfigError
from diffjax.models import NETWORKS, LinenNetwork, NetworkSpec
from diffjax.objectives import OBJECTIVES, Objective, ObjectiveContext
from diffjax.objectives.denoising import Denoising
from diffjax.options import check
from diffjax.samplers import SAMPLERS
from diffjax.samplers.grids import sigma_ve

# --------------------------------------------------------------------------------------------
# A network: two convolutions around a time embedding.


@dataclasses.dataclass(frozen=True)
class TinyConvOptions:
    features: int = 16

    def __post_init__(self):
        check(self.features >= 1, "features", self.features, "must be >= 1")


class TinyConv(nn.Module):
    features: int
    out_channels: int
    num_classes: int = 0

    @nn.compact
    def __call__(self, x, noise_cond, labels=None, train=False):
        half = self.features // 2
        freqs = jnp.exp(-math.log(1000.0) * jnp.arange(half) / half)
        angles = jnp.asarray(noise_cond, jnp.float32)[:, None] * freqs
        temb = nn.Dense(self.features)(jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], -1))
        if self.num_classes:
            temb = temb + nn.Embed(self.num_classes + 1, self.features)(
                jnp.full(x.shape[:1], self.num_classes) if labels is None else labels)
        h = nn.Conv(self.features, (3, 3))(x) + temb[:, None, None, :]
        return nn.Conv(self.out_channels, (3, 3))(nn.swish(h))


@NETWORKS.register("tiny_conv", options=TinyConvOptions)
def tiny_conv(options: TinyConvOptions, spec: NetworkSpec) -> LinenNetwork:
    module = TinyConv(options.features, spec.x_shape[-1], spec.num_classes)
    return LinenNetwork(module=module, x_shape=tuple(spec.x_shape),
                        out_channels=spec.x_shape[-1])


# --------------------------------------------------------------------------------------------
# A sampler: Euler steps of the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma in
# VE-equivalent coordinates (Karras et al. 2022, Algorithm 1 without the Heun correction),
# written here independently of diffjax's euler.


@dataclasses.dataclass(frozen=True)
class VEEulerOptions:
    denoise_last: bool = True  # the last step to sigma = 0 returns D(x; sigma_min)


@SAMPLERS.register("ve_euler", options=VEEulerOptions)
def ve_euler(pred, ts, x, rng, opts: VEEulerOptions):
    del rng
    sigmas = sigma_ve(pred.schedule, ts)
    x = x / pred.schedule.alpha(jnp.asarray(ts[0], jnp.float32))
    for i in range(len(ts)):
        denoised = pred.denoise_ve(x, ts[i])
        sigma_next = float(sigmas[i + 1]) if i + 1 < len(ts) else 0.0
        if sigma_next == 0.0 and opts.denoise_last:
            return denoised, len(ts)
        x = x + (sigma_next - float(sigmas[i])) * (x - denoised) / float(sigmas[i])
    return x, len(ts)


# --------------------------------------------------------------------------------------------
# An objective with its own trained group and its own state: the denoising loss with a learned
# per-noise-level uncertainty u(t) (Kendall et al. 2018; EDM2, Karras et al. 2024, eq. 21):
# loss = mean(exp(-u) L + u), u = phi(t) . w + b with cosine features phi_k(t) = cos(pi k t).
# Its state counts the applied updates.


@dataclasses.dataclass(frozen=True)
class UncertaintyOptions:
    features: int = 4
    lr: float = 1e-2

    def __post_init__(self):
        check(self.features >= 1, "features", self.features, "must be >= 1")
        check(self.lr > 0, "lr", self.lr, "must be > 0")


def uncertainty_features(t, num: int):
    """phi(t) [B, num] = cos(pi k t), k = 0..num-1."""
    return jnp.cos(jnp.pi * jnp.arange(num) * jnp.asarray(t, jnp.float32)[:, None])


@dataclasses.dataclass(frozen=True)
class UncertaintyWeighted(Objective):
    base: Denoising
    options: UncertaintyOptions = UncertaintyOptions()

    def init_params(self, rng, network_params):
        return {"weighting": {"w": jnp.zeros(self.options.features), "b": jnp.zeros(())}}

    def optimizers(self):
        return {"weighting": optax.adam(self.options.lr)}

    def init_state(self, rng, network_params):
        return {"applied_steps": jnp.zeros((), jnp.int32)}

    def prepare(self, x, cond, rng, step):
        return self.base.prepare(x, cond, rng, step)

    def log_variance(self, weighting, t):
        return uncertainty_features(t, self.options.features) @ weighting["w"] + weighting["b"]

    def loss(self, params, apply, inputs, state, step):
        net = lambda x, c: apply(params["network"], x, c, inputs["cond"])  # noqa: E731
        per_example = self.base.per_example_loss(net, inputs["x"], inputs["t"], inputs["eps"])
        u = self.log_variance(params["weighting"], inputs["t"])
        return jnp.mean(jnp.exp(-u) * per_example + u), {"denoising_loss": jnp.mean(per_example)}

    def after_update(self, state, params, step):
        return {"applied_steps": state["applied_steps"] + 1}


@OBJECTIVES.register("uncertainty_weighted", options=UncertaintyOptions)
def uncertainty_weighted(options: UncertaintyOptions, ctx: ObjectiveContext):
    return UncertaintyWeighted(Denoising(ctx.schedule, ctx.parameterization), options)


# --------------------------------------------------------------------------------------------
# A codec that changes the shape of x: 2x2 space-to-depth, [H, W, C] <-> [H/2, W/2, 4C].


class SpaceToDepth(Codec):
    name = "space_to_depth"
    bounds = (-1.0, 1.0)

    def x_shape(self, image_shape):
        h, w, c = image_shape
        if h % 2 or w % 2:
            raise ConfigError(f"codec 'space_to_depth' needs even image sizes; got {image_shape}")
        return (h // 2, w // 2, 4 * c)

    def encode(self, params, images, rng=None):
        b, h, w, c = images.shape
        x = images.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h // 2, w // 2, 4 * c)

    def decode(self, params, x):
        b, h, w, c4 = x.shape
        c = c4 // 4
        images = x.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
        return images.reshape(b, 2 * h, 2 * w, c)

    def encode_mask(self, mask):
        raise ConfigError("config.codec.name='space_to_depth' cannot take inpainting masks; use "
                          "codec.name='pixels' for --mode=inpaint")


@CODECS.register("space_to_depth")
def space_to_depth(options, image_shape) -> SpaceToDepth:
    codec = SpaceToDepth()
    codec.x_shape(image_shape)
    return codec


def space_to_depth_reference(images: np.ndarray) -> np.ndarray:
    """x[b, i, j, (2 di + dj) C + c] = images[b, 2i + di, 2j + dj, c], by explicit indexing."""
    b, h, w, c = images.shape
    out = np.zeros((b, h // 2, w // 2, 4 * c), images.dtype)
    for di in range(2):
        for dj in range(2):
            out[..., (2 * di + dj) * c:(2 * di + dj + 1) * c] = images[:, di::2, dj::2]
    return out


