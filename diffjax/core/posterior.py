"""The diagonal Gaussian posterior q(z | x) = N(mean, diag(exp(logvar))) of a KL autoencoder
(Kingma & Welling 2014; LDM's AutoencoderKL), and the affine latent normalisation a diffusion
model sees: x = (z - shift) * scale."""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' / LDM's DiagonalGaussianDistribution clamp


def split_moments(moments: jax.Array) -> tuple[jax.Array, jax.Array]:
    """moments [B, h, w, 2C] (the encoder's output) -> (mean, logvar), each [B, h, w, C];
    logvar clamped to LOGVAR_RANGE as LDM does."""
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)


def sample(mean: jax.Array, logvar: jax.Array, rng) -> jax.Array:
    """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) from rng: [B, h, w, C]."""
    eps = jax.random.normal(rng, mean.shape, jnp.float32)
    return mean + jnp.exp(0.5 * logvar) * eps


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) per example, summed over the latent: [B].
    0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)."""
    terms = mean**2 + jnp.exp(logvar) - 1.0 - logvar
    return 0.5 * jnp.sum(terms, axis=tuple(range(1, mean.ndim)))


def normalize(z: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """The diffusion model's x = (z - shift) * scale; shift, scale: scalars or [C]."""
    return (z - shift) * scale


def denormalize(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """The inverse of `normalize`: z = x / scale + shift."""
    return x / scale + shift
