"""Samplers as pure functions of a denoiser, a schedule and a parameterization.

A denoiser is `denoiser(x_t: [B,H,W,C], t: [B]) -> network output` in the given parameterization
(class labels, guidance and params are closed over; see guidance.classifier_free). Samplers never
see a Flax module, so they can be tested with analytic denoisers. Each one walks a decreasing time
grid t_0 > ... > t_{K-1} (grids.time_grid) and ends with a step to clean data.

  sampler    method                                                   NFE for K grid times
  ddpm       ancestral, posterior ('small') or beta ('large') variance   K
  ddim       DDIM with eta and temperature                               K
  euler      EDM Algorithm 2, Euler steps, optional churn                K
  heun       EDM Algorithm 2, Heun steps, optional churn                 2K - 1
  dpmpp_2m   DPM-Solver++(2M)                                            K
  dpmpp_3m   DPM-Solver++(3M)                                            K
  pc         score_sde predictor-corrector (ancestral + Langevin)        K (1 + corrector_steps)
  ode        probability-flow ODE, adaptive diffrax solver               from the solver's stats
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from diffjax.sampling import ancestral, dpm_solver, edm, guidance, ode, pc, repaint
from diffjax.sampling.core import Denoiser, Prediction, initial_x
from diffjax.sampling.grids import SPACINGS, karras_sigmas, sigma_ve, time_grid
from diffjax.sampling.options import (
    DDPM_VARIANCES,
    ODE_SOLVERS,
    SAMPLERS,
    SamplerOptions,
    validate,
)

_REGISTRY = {
    "ddpm": ancestral.ddpm,
    "ddim": ancestral.ddim,
    "euler": edm.euler,
    "heun": edm.heun,
    "dpmpp_2m": dpm_solver.dpmpp_2m,
    "dpmpp_3m": dpm_solver.dpmpp_3m,
    "pc": pc.pc,
    "ode": ode.probability_flow,
}
assert tuple(_REGISTRY) == SAMPLERS

__all__ = ["DDPM_VARIANCES", "Denoiser", "ODE_SOLVERS", "Prediction", "SAMPLERS", "SPACINGS",
           "SamplerOptions", "guidance", "karras_sigmas", "repaint", "sample", "sigma_ve",
           "time_grid", "to_uint8", "validate"]


def sample(denoiser: Denoiser, schedule, parameterization: str, noise, rng, *,
           options: SamplerOptions | None = None, sigma_data: float = 0.5, **overrides):
    """Draws samples with `options` (a SamplerOptions; keyword `overrides` replace its fields,
    e.g. sample(..., sampler="heun", num_steps=18)).

    noise: [B, H, W, C] standard normal; it is x at the first grid time for VP schedules and is
    scaled by sigma(t_0) for VE ones. sigma_data: the EDM parameterization's sigma_data.
    Returns (x0 [B, H, W, C] float32, NFE per sample: an int, or a traced int32 for `ode`)."""
    options = dataclasses.replace(options or SamplerOptions(), **overrides)
    ts = time_grid(schedule, options.num_steps, options.spacing, rho=options.rho)
    pred = Prediction(denoiser, schedule, parameterization, options.clip_denoised, sigma_data)
    x = initial_x(schedule, jnp.asarray(noise, jnp.float32), ts[0])
    return _REGISTRY[options.sampler](pred, ts, x, rng, options)


def to_uint8(x):
    """[-1, 1] float images -> uint8 [0, 255] (rounding, as DDPM's evaluation does)."""
    return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
