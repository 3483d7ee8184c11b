"""The flow-matching objective (Lipman et al. 2023; Liu et al. 2023; SiT, Ma et al. 2024; SD3,
Esser et al. 2024): E_t ||F(x_t, t) - target||^2 on an interpolant x_t = alpha(t) x0 + sigma(t) eps
(config.diffusion.schedule = flow_linear | flow_gvp), with t uniform or logit-normal and SD3's
(resolution-dependent) shift. The target is the parameterization's (config.diffusion.
parameterization = velocity | x0 | eps, converted into each other by core.parameterizations), so
every sampler works with the trained model."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.core import time_sampling
from diffjax.core.time_sampling import FLOW_TIME_SAMPLINGS
from diffjax.core.weightings import WEIGHTINGS
from diffjax.errors import ConfigError
from diffjax.objectives import OBJECTIVES, ObjectiveContext
from diffjax.objectives.denoising import Denoising
from diffjax.options import check, choice


@dataclasses.dataclass(frozen=True)
class FlowMatchingOptions:
    """time_sampling: uniform | logit_normal (logit_mean m, logit_std s: SD3's m = 0, s = 1);
    shift: SD3's timestep shift s (1: none; SD3 uses 3.0 at 1024^2), multiplied by
    sqrt(H W) / shift_base_size for x of H x W when shift_base_size > 0 (SD3's resolution-
    dependent shift); t_min, t_max: the training times are clipped to [t_min, t_max].
    weighting: of the target's MSE ('simple': plain MSE, the flow-matching loss)."""

    time_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    shift_base_size: int = 0
    t_min: float = 0.0
    t_max: float = 1.0
    weighting: str = "simple"
    min_snr_gamma: float = 5.0

    def __post_init__(self):
        choice("time_sampling", self.time_sampling, FLOW_TIME_SAMPLINGS)
        choice("weighting", self.weighting, WEIGHTINGS)
        check(self.logit_std > 0, "logit_std", self.logit_std, "must be > 0")
        check(self.shift > 0, "shift", self.shift, "must be > 0 (1: no shift)")
        check(self.shift_base_size >= 0, "shift_base_size", self.shift_base_size,
              "must be >= 0 (0: a constant shift)")
        check(0 <= self.t_min < self.t_max <= 1, "t_min", self.t_min,
              f"need 0 <= t_min < t_max (={self.t_max}) <= 1")
        check(self.min_snr_gamma > 0, "min_snr_gamma", self.min_snr_gamma, "must be > 0")


@dataclasses.dataclass(frozen=True)
class FlowMatching(Denoising):
    """Denoising's loss with flow-matching times (see the module docstring)."""

    options: FlowMatchingOptions = FlowMatchingOptions()

    def _shift(self, shape) -> float:
        o = self.options
        return time_sampling.resolution_shift(o.shift, o.shift_base_size, shape[1], shape[2])

    def draw_noise(self, rng, shape, step=None):
        """Times t [B] and noise eps [B, H, W, C] of one batch (step is unused)."""
        o = self.options
        rng_t, rng_eps = jax.random.split(rng)
        t = time_sampling.flow_time(rng_t, shape[0], o.time_sampling, o.logit_mean,
                                    o.logit_std, self._shift(shape), o.t_min, o.t_max)
        return t, jax.random.normal(rng_eps, shape, jnp.float32)

    def validation_times(self, num_levels: int, shape=None):
        """The midpoint quantiles of the time distribution: [K]."""
        o = self.options
        shift = self._shift(shape) if shape is not None else o.shift
        return time_sampling.flow_time_quantiles(num_levels, o.time_sampling, o.logit_mean,
                                                 o.logit_std, shift, o.t_min, o.t_max)


@OBJECTIVES.register("flow_matching", options=FlowMatchingOptions)
def flow_matching(options: FlowMatchingOptions, ctx: ObjectiveContext) -> FlowMatching:
    if not getattr(ctx.schedule, "is_interpolant", False):
        raise ConfigError(f"config.objective.name='flow_matching' trains on an interpolant: "
                          f"config.diffusion.schedule must be flow_linear or flow_gvp, not "
                          f"{getattr(ctx.schedule, 'name', ctx.schedule)!r} (use "
                          f"objective.name='denoising' for diffusion schedules)")
    return FlowMatching(ctx.schedule, ctx.parameterization, options, ctx.network)
