"""Multistep consistency sampling (Song et al. 2023, Algorithm 1): x0 = f(x_T, s_max); then
for each intermediate level s_k, x = x0 + sqrt(s_k^2 - s_min^2) z and x0 = f(x, s_k). NFE =
num_steps. Only for consistency models (diffusion.parameterization='consistency')."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.core import consistency as cm
from diffjax.errors import ConfigError
from diffjax.options import check
from diffjax.samplers.prediction import Prediction
from diffjax.samplers.registry import SAMPLERS


@dataclasses.dataclass(frozen=True)
class ConsistencyOptions:
    """sigmas: the num_steps - 1 intermediate VE-equivalent levels, decreasing (empty: the
    paper's 0.821 for 2 steps, else the EDM rho grid; see core.consistency.sampling_sigmas)."""

    sigmas: tuple = ()

    def __post_init__(self):
        sigmas = tuple(float(s) for s in self.sigmas)
        check(all(s > 0 for s in sigmas), "sigmas", self.sigmas, "must all be > 0")
        check(all(a > b for a, b in zip(sigmas, sigmas[1:])), "sigmas", self.sigmas,
              "must decrease")
        object.__setattr__(self, "sigmas", sigmas)

    def validate(self, schedule, parameterization, num_steps: int) -> None:
        """The model must be a consistency model, and sigmas fit num_steps and the schedule."""
        check_consistency_model(parameterization)
        levels(schedule, num_steps, self)


def check_consistency_model(parameterization) -> None:
    """Raises ConfigError unless the model is a consistency model."""
    name = getattr(parameterization, "name", parameterization)
    if name != "consistency":
        raise ConfigError(f"config.sampling.sampler='consistency' samples consistency models "
                          f"(config.diffusion.parameterization='consistency', trained with "
                          f"objective.name='consistency_training' or 'consistency_distillation'); "
                          f"this model's parameterization is {name!r}: use ddim, heun, dpmpp_2m, "
                          f"... for it")


def levels(schedule, num_steps: int, options: ConsistencyOptions):
    """(times [K], VE-equivalent levels [K]) of the K = num_steps evaluations, float32."""
    with jax.ensure_compile_time_eval():
        t01 = jnp.asarray([0.0, 1.0], jnp.float32)
        s = schedule.sigma(t01) / schedule.alpha(t01)
        s_min, s_max = float(s[0]), float(s[1])
    if options.sigmas:
        if len(options.sigmas) != num_steps - 1:
            raise ConfigError(f"config.sampling.consistency.sigmas={options.sigmas} has "
                              f"{len(options.sigmas)} levels; config.sampling.num_steps="
                              f"{num_steps} needs {num_steps - 1}")
        bad = [v for v in options.sigmas if not s_min < v < s_max]
        if bad:
            raise ConfigError(f"config.sampling.consistency.sigmas={options.sigmas}: {bad[0]} "
                              f"is outside the schedule's levels ({s_min:g}, {s_max:g})")
        sigmas = jnp.asarray((s_max, *options.sigmas), jnp.float32)
    else:
        sigmas = jnp.asarray(cm.sampling_sigmas(num_steps, s_min, s_max), jnp.float32)
    ts = jnp.clip(schedule.t_from_logsnr(-2.0 * jnp.log(sigmas)), 0.0, 1.0).at[0].set(1.0)
    return ts, sigmas, s_min


@SAMPLERS.register("consistency", options=ConsistencyOptions)
def consistency(pred: Prediction, ts, x, rng, opts: ConsistencyOptions):
    """Algorithm 1 on the levels of `levels` (the time grid's length is num_steps; its times are
    replaced by the consistency levels). x: [B,H,W,C] at t = 1. Returns (x0, num_steps)."""
    check_consistency_model(pred.parameterization)
    schedule = pred.schedule
    times, sigmas, s_min = levels(schedule, len(ts), opts)
    x0 = pred.x0_eps(x, times[0])[0]
    if len(ts) == 1:
        return x0, 1

    def step(x0, inputs):
        t, s, key = inputs
        z = jax.random.normal(key, x0.shape, jnp.float32)
        x_t = schedule.alpha(t) * (x0 + jnp.sqrt(jnp.maximum(s**2 - s_min**2, 0.0)) * z)
        return pred.x0_eps(x_t, t)[0], None

    keys = jax.random.split(rng, len(ts) - 1)
    x0, _ = jax.lax.scan(step, x0, (times[1:], sigmas[1:], keys))
    return x0, len(ts)
