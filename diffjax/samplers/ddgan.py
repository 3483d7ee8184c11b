"""DDGAN sampling (Xiao et al. 2022, Algorithm 2): from x at t_T = t_max, T steps down the
levels t_k = k t_max / T; each draws a latent z ~ N(0, I), lets the generator propose
x0 = G(x_{t_k}, z, t_k) and samples x_{t_{k-1}} ~ q(x_{t_{k-1}} | x_{t_k}, x0); the last step
returns x0. NFE = T = num_steps, which must be the T the model was trained with (the objective
refuses others). Only for latent generators (diffusion.parameterization='x0_latent')."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.core import ddgan as dg
from diffjax.errors import ConfigError
from diffjax.samplers.prediction import Prediction
from diffjax.samplers.registry import SAMPLERS


@dataclasses.dataclass(frozen=True)
class DDGANSamplerOptions:
    """No options: the levels are the T equal steps of training (num_steps of them)."""

    def validate(self, schedule, parameterization, num_steps: int) -> None:
        """The model must be a latent generator."""
        check_latent_generator(parameterization)


def check_latent_generator(parameterization) -> None:
    """Raises ConfigError unless the model is a GAN generator G(x_t, z, t)."""
    name = getattr(parameterization, "name", parameterization)
    if name != "x0_latent":
        raise ConfigError(f"config.sampling.sampler='ddgan' samples latent generators "
                          f"(config.diffusion.parameterization='x0_latent', trained with "
                          f"objective.name='ddgan'); this model's parameterization is "
                          f"{name!r}: use its own samplers (ddpm, ddim, heun, ...)")


@SAMPLERS.register("ddgan", options=DDGANSamplerOptions)
def ddgan(pred: Prediction, ts, x, rng, opts: DDGANSamplerOptions):
    """x: [B,H,W,C] at t_max (standard normal on VP schedules); len(ts) = T steps. Returns
    (x0 [B,H,W,C], T), x0 clipped to the codec's bounds where the Prediction clips."""
    check_latent_generator(pred.parameterization)
    num_steps = len(ts)
    levels = dg.levels(num_steps, getattr(pred.schedule, "t_max", 1.0))
    latent_shape = (x.shape[0], pred.parameterization.latent_dim)
    sched = pred.schedule

    def step(x_t, inputs):
        k, key = inputs
        k_z, k_noise = jax.random.split(key)
        t, s = levels[k], levels[k - 1]
        x0, _ = pred.x0_eps(x_t, t, r=jax.random.normal(k_z, latent_shape, jnp.float32))
        alpha_t, sigma_t = dg.marginal_coefficients(sched, t)
        alpha_s, sigma_s = dg.marginal_coefficients(sched, s)
        noise = jax.random.normal(k_noise, x_t.shape, jnp.float32)
        return dg.posterior_sample(x_t, x0, noise, alpha_t, sigma_t, alpha_s, sigma_s), None

    ks = jnp.arange(num_steps, 0, -1)
    x, _ = jax.lax.scan(step, x, (ks, jax.random.split(rng, num_steps)))
    if pred.clip is not None:
        x = jnp.clip(x, *pred.clip)
    return x, num_steps
