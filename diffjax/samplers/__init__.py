"""Samplers as pure functions of a denoiser, a schedule and a parameterization.

A denoiser is `denoiser(x_t: [B,H,W,C], t: [B]) -> network output` in the given parameterization
(conditioning, guidance and params are closed over; see guidance.classifier_free). Samplers never
see a Flax module, so they can be tested with analytic denoisers. Each one walks a decreasing time
grid t_0 > ... > t_{K-1} (grids.time_grid) and ends with a step to clean data. Each is registered
in SAMPLERS with its options dataclass (config.sampling.<name>):

  sampler    method                                                   NFE for K grid times
  ddpm       ancestral, posterior ('small') or beta ('large') variance   K
  ddim       DDIM with eta and temperature                               K
  euler      EDM Algorithm 2, Euler steps, optional churn                K
  heun       EDM Algorithm 2, Heun steps, optional churn                 2K - 1
  dpmpp_2m   DPM-Solver++(2M)                                            K
  dpmpp_3m   DPM-Solver++(3M)                                            K
  pc         score_sde predictor-corrector (ancestral + Langevin)        K (1 + corrector_steps)
  ode        probability-flow ODE, adaptive diffrax solver               from the solver's stats
  flow_euler Euler steps of dx/dt = v(x, t) (flow matching's own time)   K
  flow_heun  Heun steps of dx/dt = v(x, t)                               2K - 1
  flow_sde   SiT's SDE, Euler-Maruyama with a diffusion coefficient      K
  consistency multistep consistency sampling (consistency models only)   K
  mean_flow  MeanFlow's z_r = z_t - (t - r) u (average-velocity models)  K
  ddgan      DDGAN's generator + posterior steps (latent generators)    K (= the trained T)
"""

from __future__ import annotations

import dataclasses
import importlib

import jax.numpy as jnp

from diffjax.samplers import guidance, repaint
from diffjax.samplers.grids import SPACINGS, karras_sigmas, sigma_ve, time_grid
from diffjax.samplers.options import GridOptions
from diffjax.samplers.prediction import Denoiser, Prediction, initial_x
from diffjax.samplers.registry import SAMPLERS

# registers, in the table's order
for _module in ("ancestral", "edm", "dpm_solver", "pc", "ode", "flow", "consistency",
                "mean_flow", "ddgan"):
    importlib.import_module(f"diffjax.samplers.{_module}")

__all__ = ["Denoiser", "GridOptions", "Prediction", "SAMPLERS", "SPACINGS", "guidance",
           "karras_sigmas", "repaint", "sample", "sigma_ve", "time_grid"]


def _split_overrides(entry, grid: GridOptions | None, options, overrides: dict):
    """Keyword overrides -> (GridOptions, the sampler's options): each name goes to whichever of
    the two has a field of that name."""
    grid = grid or GridOptions()
    options = options if options is not None else entry.default_options()
    grid_fields = {f.name for f in dataclasses.fields(GridOptions)}
    own = {f.name for f in dataclasses.fields(entry.options)} if entry.options else set()
    unknown = sorted(set(overrides) - grid_fields - own)
    if unknown:
        raise TypeError(f"sampler {entry.name!r} has no option {unknown[0]!r}; its options: "
                        f"{', '.join(sorted(grid_fields | own))}")
    grid = dataclasses.replace(grid, **{k: v for k, v in overrides.items() if k in grid_fields})
    if own:
        options = dataclasses.replace(options, **{k: v for k, v in overrides.items() if k in own})
    return grid, options


def sample(denoiser: Denoiser, schedule, parameterization, noise, rng, *, sampler: str = "ddim",
           grid: GridOptions | None = None, options=None, clip=None, **overrides):
    """Draws samples with sampler `sampler` on the time grid `grid`.

    parameterization: a Parameterization or its name. options: the sampler's options dataclass
    (None: its defaults). Keyword overrides replace fields of either, e.g.
    sample(..., sampler="heun", num_steps=18, spacing="karras", s_churn=40.0).
    clip: (lo, hi) bounds for x0_hat (the codec's), or None.
    noise: [B, H, W, C] standard normal; it is x at the first grid time for VP schedules and is
    scaled by sigma(t_0) for VE ones.
    Returns (x0 [B, H, W, C] float32, NFE per sample: an int, or a traced int32 for `ode`)."""
    entry = SAMPLERS.get(sampler)
    grid, options = _split_overrides(entry, grid, options, overrides)
    ts = time_grid(schedule, grid.num_steps, grid.spacing, rho=grid.rho)
    pred = Prediction(denoiser, schedule, parameterization, clip)
    x = initial_x(schedule, jnp.asarray(noise, jnp.float32), ts[0])
    return entry.factory(pred, ts, x, rng, options)
