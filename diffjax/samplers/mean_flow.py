"""MeanFlow sampling (Geng et al. 2025, Algorithm 2 and its multi-step form): K equal steps in t
from the grid's first time t_0 to 0, z_r = z_t - (t - r) u(z_t, r, t); one step is
x = z_{t_0} - t_0 u(z_{t_0}, 0, t_0). NFE = num_steps. Only for two-time models
(diffusion.parameterization='mean_velocity')."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.core import mean_flow as mf
from diffjax.errors import ConfigError
from diffjax.samplers.prediction import Prediction
from diffjax.samplers.registry import SAMPLERS


@dataclasses.dataclass(frozen=True)
class MeanFlowSamplerOptions:
    """No options: the steps are equal in t (num_steps of them)."""

    def validate(self, schedule, parameterization, num_steps: int) -> None:
        """The model must be a two-time (average-velocity) model."""
        check_mean_velocity_model(parameterization)


def check_mean_velocity_model(parameterization) -> None:
    """Raises ConfigError unless the model predicts an average velocity u(z, r, t)."""
    name = getattr(parameterization, "name", parameterization)
    if name != "mean_velocity":
        raise ConfigError(f"config.sampling.sampler='mean_flow' samples average-velocity models "
                          f"(config.diffusion.parameterization='mean_velocity', trained with "
                          f"objective.name='mean_flow'); this model's parameterization is "
                          f"{name!r}: use its own samplers (ddim, heun, flow_euler, ...)")


def times(t0: float, num_steps: int):
    """The K + 1 times t_0 > ... > t_K = 0 of K equal steps: [K + 1] float32."""
    return jnp.linspace(jnp.float32(t0), 0.0, num_steps + 1, dtype=jnp.float32)


@SAMPLERS.register("mean_flow", options=MeanFlowSamplerOptions)
def mean_flow(pred: Prediction, ts, x, rng, opts: MeanFlowSamplerOptions):
    """x: [B,H,W,C] at the grid's first time ts[0]; len(ts) steps. Returns (x0, num_steps),
    x0 clipped to the codec's bounds where the Prediction clips."""
    check_mean_velocity_model(pred.parameterization)
    grid = times(float(ts[0]), len(ts))

    def step(z, pair):
        t, r = pair
        return mf.step(z, pred.average_velocity(z, t, r), r, t), None

    x, _ = jax.lax.scan(step, x, (grid[:-1], grid[1:]))
    if pred.clip is not None:
        x = jnp.clip(x, *pred.clip)
    return x, len(ts)
