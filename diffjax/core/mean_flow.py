"""MeanFlow (Geng et al. 2025) as pure functions: the average velocity of a flow ODE
dz/dt = v(z, t) over [r, t],

    u(z_t, r, t) = (z_t - z_r) / (t - r),

satisfies the MeanFlow identity u = v - (t - r) du/dt, with du/dt the total derivative along the
trajectory, d/dt u(z_t, r, t) = v . grad_z u + d_t u: one forward-mode product (jax.jvp) with
tangents (v, 0, 1) on (z, r, t). Training regresses u_theta on sg(v - (t - r) du_theta/dt) with
the conditional velocity v of each (x0, eps) pair; one step z_r = z_t - (t - r) u samples."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.core.parameterizations import bcast


def sample_times(rng, batch: int, p_mean: float, p_std: float, ratio: float):
    """(r, t) [B] float32 each, r <= t: two logit-normal draws (sigmoid of N(p_mean, p_std^2)),
    sorted; a fraction 1 - ratio of the examples (Bernoulli per example) gets r = t, the
    flow-matching case. ratio: the paper's 'ratio of r != t'."""
    rng_times, rng_keep = jax.random.split(rng)
    times = jax.nn.sigmoid(p_mean + p_std * jax.random.normal(rng_times, (2, batch)))
    t, r = jnp.max(times, axis=0), jnp.min(times, axis=0)
    distinct = jax.random.uniform(rng_keep, (batch,)) < ratio
    return jnp.where(distinct, r, t), t


def total_derivative(u_fn: Callable, z, r, t, v):
    """(u(z, r, t), d/dt u(z_t, r, t) along dz/dt = v): the JVP of u_fn at (z, r, t) with tangents
    (v, 0, 1). u_fn: (z [B,H,W,C], r [B], t [B]) -> [B,H,W,C]. Returns two [B,H,W,C]."""
    return jax.jvp(u_fn, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))


def target(v, dudt, r, t):
    """MeanFlow's regression target u_tgt = v - (t - r) du/dt (eq. 10). v, dudt: [B,H,W,C];
    r, t: [B]. Returns [B,H,W,C] (the caller stops its gradient)."""
    return v - bcast(t - r, v) * dudt


def adaptive_weight(squared_error, power: float, c: float):
    """The adaptive loss weight w = 1 / (||Delta||^2 + c)^p (Sec. 4.3; p = 0: the plain squared
    L2 loss). squared_error: [B] of ||Delta||^2 summed over the image. Returns [B]."""
    return 1.0 / (squared_error + c) ** power


def step(z, u, r, t):
    """z_r = z_t - (t - r) u(z_t, r, t): [B,H,W,C] (r, t scalars or [B])."""
    return z - bcast(jnp.broadcast_to(t - r, z.shape[:1]), z) * u
