"""The contract every network implements, and its implementation for Flax linen modules.

A network maps (x [B,H,W,C] in the codec's space, noise conditioning, conditioning inputs, the
train flag) to an output [B,H,W,out_channels + extra channels]:
- noise_cond: [B] float32 (num_noise_inputs = 1), or a tuple of num_noise_inputs [B] arrays
  (e.g. MeanFlow's (t, t - r)) whose last may be a generator latent [B, latent_dim] (DDGAN's z,
  latent_dim > 0); the parameterization computes it (c_noise).
- cond: the conditioning plug-in's dict of per-example arrays, e.g. {'label': [B] int32}, or {}.
  Labels run over [0, num_classes]; num_classes is the null label of classifier-free guidance,
  a rule of the conditioning (see diffjax.conditioning), for which the network keeps a row.
- output: the first out_channels channels are the parameterization's prediction; extra outputs
  (e.g. a learned variance) follow in the order of `extra_outputs`.
Nothing outside a network reads its attributes beyond this contract.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """What the builder tells a network factory: the shape of x (the codec's space), how many
    classes the conditioning feeds as cond['label'] (0: none), the compute dtype, the text
    encoder's spec where the conditioning feeds cond['tokens'] and cond['mask'] [B, L], and how
    many noise inputs the parameterization conditions on (the last a latent vector [B, latent_dim]
    where latent_dim > 0)."""

    x_shape: tuple[int, int, int]
    num_classes: int = 0
    compute_dtype: str = "float32"
    text: Any = None  # a models.text.TextSpec when cond carries text tokens (cross-attention)
    num_noise_inputs: int = 1  # the parameterization's c_noise arrays (2: MeanFlow's (t, t - r))
    latent_dim: int = 0  # the width of a latent last noise input (DDGAN's z); 0: none
    # The width of cond['augment'] (augmentation labels) a network may embed itself, as EDM's
    # map_augment does; one that does lists 'augment' in `embedded`, else the labels arrive as
    # input channels (InputLabels). 0: none.
    augment_dim: int = 0


def noise_cond_shapes(num_noise_inputs: int, latent_dim: int, batch: int):
    """The shape of noise_cond: (batch,), or a tuple of num_noise_inputs shapes, the last
    (batch, latent_dim) where latent_dim > 0."""
    if num_noise_inputs == 1 and not latent_dim:
        return (batch,)
    shapes = [(batch,)] * num_noise_inputs
    if latent_dim:
        shapes[-1] = (batch, latent_dim)
    return tuple(shapes)


def map_noise_shapes(fn, shapes):
    """fn applied to each shape of noise_cond_shapes' result, keeping its structure."""
    if shapes and isinstance(shapes[0], tuple):
        return tuple(fn(s) for s in shapes)
    return fn(shapes)


class Network:
    """The network contract (see the module docstring). Subclasses implement init and apply."""

    x_shape: tuple[int, int, int]
    out_channels: int
    extra_outputs: tuple[tuple[str, int], ...] = ()
    num_noise_inputs: int = 1
    latent_dim: int = 0
    # Non-trained constants the network's paper counts as parameters (DiT's fixed position
    # embedding); they are not in params, so count_params(params) leaves them out.
    num_fixed_scalars: int = 0
    # Whether apply(train=True) draws randomness from rng (dropout). The train step vmaps a
    # stochastic network over the batch, one key per example; any other is applied to it whole.
    stochastic: bool = True

    def init(self, rng) -> Any:
        """Fresh params for inputs of shape x_shape."""
        raise NotImplementedError

    def apply(self, params, x, noise_cond, cond: dict, train: bool = False, rng=None):
        """x: [B,H,W,C]; noise_cond: [B] (or a tuple); cond: dict of [B, ...] arrays; rng: the
        dropout key when train. Returns [B,H,W,out_channels + extra] float32."""
        raise NotImplementedError

    def predict(self, params, x, noise_cond, cond: dict, train: bool = False, rng=None):
        """The parameterization's prediction: apply's first out_channels channels (extra
        outputs dropped). [B,H,W,out_channels]."""
        output = self.apply(params, x, noise_cond, cond, train, rng)
        return output[..., :self.out_channels] if self.extra_outputs else output

    def project_params(self, params):
        """The params after each optimizer update (the train step calls it), e.g. EDM2's forced
        weight normalisation; default: unchanged."""
        return params

    def split_output(self, output) -> tuple[jax.Array, dict[str, jax.Array]]:
        """output [B,H,W,out+extra] -> (the prediction [B,H,W,out], {extra name: [B,H,W,c]})."""
        main, start, extras = output[..., :self.out_channels], self.out_channels, {}
        for name, channels in self.extra_outputs:
            extras[name] = output[..., start:start + channels]
            start += channels
        return main, extras


@dataclasses.dataclass(frozen=True)
class LinenNetwork(Network):
    """A Flax linen module called as module(x, noise_cond, cond_input, train=train), where
    cond_input is cond[cond_key] (None when absent) or, with cond_key=None, the whole dict.
    Text-conditional networks take the whole dict and init with `text_init_cond`."""

    module: Any
    x_shape: tuple[int, int, int]
    out_channels: int
    extra_outputs: tuple[tuple[str, int], ...] = ()
    num_noise_inputs: int = 1
    latent_dim: int = 0
    cond_key: str | None = "label"
    num_fixed_scalars: int = 0
    stochastic: bool = True
    init_cond: Any = None  # the conditioning input init traces with (None: no conditioning)
    embedded: tuple[str, ...] = ()  # cond keys the module embeds itself (e.g. 'augment')

    def _cond_input(self, cond: dict):
        return cond if self.cond_key is None else (cond or {}).get(self.cond_key)

    def init(self, rng):
        dummy = jnp.zeros((1, *self.x_shape), jnp.float32)
        noise = map_noise_shapes(jnp.zeros, noise_cond_shapes(self.num_noise_inputs,
                                                              self.latent_dim, 1))
        return self.module.init({"params": rng}, dummy, noise, self.init_cond,
                                train=False)["params"]

    def apply(self, params, x, noise_cond, cond: dict, train: bool = False, rng=None):
        rngs = {"dropout": rng} if rng is not None else {}
        return self.module.apply({"params": params}, x, noise_cond, self._cond_input(cond),
                                 train=train, rngs=rngs)


@dataclasses.dataclass(frozen=True)
class InputLabels(Network):
    """`inner` applied to x with extra input channels: for each (key, channels) of `inputs`,
    cond[key] either [B, channels], broadcast over H x W, or an image [B, h, w, channels],
    bilinearly resized to H x W; zeros where cond lacks the key. How augmentation labels and a
    low-resolution image reach any network (the first layer sees them, like an embedding). The
    inner network must be a dataclass taking its input shape as x_shape (LinenNetwork)."""

    inner: Network
    inputs: tuple[tuple[str, int], ...]

    x_shape = property(lambda self: self.inner.x_shape)
    out_channels = property(lambda self: self.inner.out_channels)
    extra_outputs = property(lambda self: self.inner.extra_outputs)
    num_noise_inputs = property(lambda self: self.inner.num_noise_inputs)
    latent_dim = property(lambda self: self.inner.latent_dim)
    num_fixed_scalars = property(lambda self: self.inner.num_fixed_scalars)
    stochastic = property(lambda self: self.inner.stochastic)

    def init(self, rng):
        h, w, c = self.inner.x_shape
        extra = sum(channels for _, channels in self.inputs)
        return dataclasses.replace(self.inner, x_shape=(h, w, c + extra)).init(rng)

    def maps(self, x, cond: dict) -> jax.Array:
        """x [B, H, W, C] with the inputs' channels appended: [B, H, W, C + sum(channels)]."""
        b, h, w, _ = x.shape
        parts = [x]
        for key, channels in self.inputs:
            value = (cond or {}).get(key)
            if value is None:
                value = jnp.zeros((b, channels), x.dtype)
            value = value.astype(x.dtype)
            if value.ndim == 4:
                parts.append(jax.image.resize(value, (b, h, w, channels), "linear")
                             if value.shape[1:3] != (h, w) else value)
            else:
                parts.append(jnp.broadcast_to(value[:, None, None, :], (b, h, w, channels)))
        return jnp.concatenate(parts, -1)

    def apply(self, params, x, noise_cond, cond: dict, train: bool = False, rng=None):
        return self.inner.apply(params, self.maps(x, cond), noise_cond, cond, train, rng)

    def project_params(self, params):
        return self.inner.project_params(params)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def count_params(params: Any) -> int:
    """Total number of scalars in a pytree of arrays (or jax.ShapeDtypeStruct from eval_shape)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


def text_init_cond(text) -> dict:
    """The dummy cond a text-conditional network is initialised with: one prompt of
    text.context_length tokens, all valid."""
    length = text.context_length
    return {"tokens": jnp.ones((1, length), jnp.int32), "mask": jnp.ones((1, length), bool)}
