"""Denoising diffusion GANs (DDGAN, Xiao et al. 2022): a few large denoising steps, each a
conditional GAN. A generator G(x_t, z, t) proposes x0; x_{t-1} is then drawn from the Gaussian
posterior q(x_{t-1} | x_t, x0), so the implied p(x_{t-1} | x_t) can be multimodal, which a
Gaussian step of that size cannot be. A discriminator D(x_{t-1}, x_t, t) tells real pairs
(x_{t-1} ~ q(x_{t-1} | x0), x_t ~ q(x_t | x_{t-1})) from generated ones.

The T levels are t_k = k t_max / T, k = 1..T, on a continuous schedule (the paper: the VP SDE
of beta 0.1..20 at T = 4); level 0 is clean data (alpha = 1, sigma = 0), so the last step's
posterior is x0 itself."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core.parameterizations import bcast
from diffjax.core.schedules import posterior


def levels(num_steps: int, t_max: float = 1.0) -> jax.Array:
    """The times t_0 = 0 < t_1 < ... < t_T = t_max of T equal steps: [T + 1] float32."""
    return jnp.linspace(0.0, jnp.float32(t_max), num_steps + 1, dtype=jnp.float32)


def marginal_coefficients(schedule, t):
    """(alpha(t), sigma(t)) with level 0 exactly clean: (1, 0) where t == 0. t: [B]."""
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    clean = t <= 0.0
    return jnp.where(clean, 1.0, alpha), jnp.where(clean, 0.0, sigma)


def forward_step(x_s, noise, alpha_s, sigma_s, alpha_t, sigma_t):
    """x_t ~ q(x_t | x_s) for s < t: (alpha_t / alpha_s) x_s + sigma_{t|s} noise, with
    sigma_{t|s}^2 = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2. x_s, noise: [B,H,W,C];
    coefficients [B]."""
    ratio = alpha_t / alpha_s
    std = jnp.sqrt(jnp.maximum(sigma_t**2 - ratio**2 * sigma_s**2, 0.0))
    return bcast(ratio, x_s) * x_s + bcast(std, x_s) * noise


def posterior_sample(x_t, x0, noise, alpha_t, sigma_t, alpha_s, sigma_s):
    """x_s ~ q(x_s | x_t, x0) (the true posterior variance): [B,H,W,C]; at sigma_s = 0 it is
    x0. Coefficients [B] (or scalars)."""
    c_xt, c_x0, var, _ = posterior(alpha_t, sigma_t, alpha_s, sigma_s)
    std = jnp.sqrt(jnp.maximum(var, 0.0))
    return bcast(c_xt, x_t) * x_t + bcast(c_x0, x_t) * x0 + bcast(std, x_t) * noise


def discriminator_loss(logits_real, logits_fake) -> jax.Array:
    """The non-saturating GAN's discriminator loss per example, softplus(-D(real)) +
    softplus(D(fake)) (= -log sigmoid(real) - log(1 - sigmoid(fake))): [B]."""
    return jax.nn.softplus(-logits_real) + jax.nn.softplus(logits_fake)


def generator_loss(logits_fake) -> jax.Array:
    """The non-saturating generator loss per example, softplus(-D(fake)): [B]."""
    return jax.nn.softplus(-logits_fake)


def r1_penalty(grads) -> jax.Array:
    """R1 (Mescheder et al. 2018) per example: ||grad_x D(x)||^2 on real x, [B] from the
    gradient [B, ...]."""
    return jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, axis=1)
