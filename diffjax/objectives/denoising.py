"""The denoising objective: E_t w(t) ||F(c_in x_t, c_noise(t)) - target||^2 with
x_t = alpha x0 + sigma eps, for any schedule, parameterization (eps, x0, v, edm) and weighting
(simple, snr, min_snr, edm), with uniform or lognormal times and a noise-level curriculum."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.core import time_sampling
from diffjax.core.parameterizations import bcast
from diffjax.core.time_sampling import TIME_SAMPLINGS, Curriculum
from diffjax.core.weightings import WEIGHTINGS, loss_weight
from diffjax.objectives import OBJECTIVES, Objective, ObjectiveContext
from diffjax.options import check, choice


@dataclasses.dataclass(frozen=True)
class DenoisingOptions:
    """weighting (min_snr_gamma for min_snr); time_sampling uniform | lognormal (p_mean, p_std:
    EDM's ln sigma ~ N(p_mean, p_std^2)); curriculum_steps > 0 moves the time distribution from
    the *_start values to its own over that many steps (see core.time_sampling.Curriculum)."""

    weighting: str = "simple"
    min_snr_gamma: float = 5.0
    time_sampling: str = "uniform"
    p_mean: float = -1.2
    p_std: float = 1.2
    curriculum_steps: int = 0
    curriculum_t_min_start: float = 0.0
    curriculum_t_max_start: float = 1.0
    curriculum_p_mean_start: float = -1.2
    curriculum_p_std_start: float = 1.2

    def __post_init__(self):
        choice("weighting", self.weighting, WEIGHTINGS)
        choice("time_sampling", self.time_sampling, TIME_SAMPLINGS)
        check(self.min_snr_gamma > 0, "min_snr_gamma", self.min_snr_gamma, "must be > 0")
        check(self.p_std > 0, "p_std", self.p_std, "must be > 0")
        self.curriculum  # noqa: B018 -- validates the curriculum fields

    @property
    def curriculum(self) -> Curriculum:
        return Curriculum(self.curriculum_steps, self.curriculum_t_min_start,
                          self.curriculum_t_max_start, self.curriculum_p_mean_start,
                          self.curriculum_p_std_start)


@dataclasses.dataclass(frozen=True)
class Denoising(Objective):
    """See the module docstring. schedule, parameterization: typed parts; options: above;
    network: where given, its extra outputs are dropped before the loss."""

    schedule: object
    parameterization: object
    options: DenoisingOptions = DenoisingOptions()
    network: object = None

    def _prediction(self, output):
        net = self.network
        return output[..., :net.out_channels] if net is not None and net.extra_outputs else output

    def draw_noise(self, rng, shape: tuple[int, ...], step=None):
        """Times t [B] and noise eps [B, H, W, C] of one batch. step: the train step (int32,
        may be traced); with a curriculum the time distribution is a pure function of it."""
        o = self.options
        rng_t, rng_eps = jax.random.split(rng)
        if o.curriculum_steps > 0 and step is not None:
            cur = time_sampling.curriculum_at(o.curriculum, step, o.p_mean, o.p_std)
            t = time_sampling.sample_time(rng_t, shape[0], self.schedule, o.time_sampling,
                                          cur["p_mean"], cur["p_std"],
                                          t_range=(cur["t_min"], cur["t_max"]))
        else:
            t = time_sampling.sample_time(rng_t, shape[0], self.schedule, o.time_sampling,
                                          o.p_mean, o.p_std)
        return t, jax.random.normal(rng_eps, shape, jnp.float32)

    def prepare(self, x, cond, rng, step):
        t, eps = self.draw_noise(rng, x.shape, step)
        return {"x": x, "cond": cond, "t": t, "eps": eps}

    def per_example_loss(self, net: Callable, x0, t, eps):
        """Weighted loss per example [B] for times t [B] and noise eps [B, H, W, C].
        net: (network input [B,H,W,C], c_noise [B]) -> output [B,H,W,C]."""
        schedule, param, o = self.schedule, self.parameterization, self.options
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        x_t = bcast(alpha, x0) * x0 + bcast(sigma, x0) * eps
        output = param.network_output(net, x_t, t, schedule)
        mse = jnp.mean((output - param.target(x0, eps, alpha, sigma)) ** 2,
                       axis=tuple(range(1, x0.ndim)))
        weight = loss_weight(o.weighting, param, alpha, sigma, o.min_snr_gamma, param.sigma_data)
        return weight * mse

    def loss(self, params, apply, inputs, state, step):
        net = lambda x, c_noise: self._prediction(  # noqa: E731
            apply(params["network"], x, c_noise, inputs["cond"]))
        per_example = self.per_example_loss(net, inputs["x"], inputs["t"], inputs["eps"])
        return jnp.mean(per_example), {}

    def validation_times(self, num_levels: int, shape=None):
        """The midpoint quantiles of the time distribution (no curriculum): [K]. shape: of the
        held-out x (unused here)."""
        o = self.options
        return time_sampling.time_quantiles(self.schedule, o.time_sampling, num_levels,
                                            o.p_mean, o.p_std)

    def validation_losses(self, params, apply, x, cond, rng, num_levels: int, state=None):
        """The loss of x at each fixed time ts[k] of validation_times, with noise
        eps_k = normal(fold_in(rng, k), x.shape): [K, B], deterministic (one pass per level)."""
        net = lambda x_in, c_noise: self._prediction(  # noqa: E731
            apply(params["network"], x_in, c_noise, cond))
        ts = jnp.asarray(self.validation_times(num_levels, x.shape), jnp.float32)

        def level(inputs):
            k, t = inputs
            eps = jax.random.normal(jax.random.fold_in(rng, k), x.shape, jnp.float32)
            return self.per_example_loss(net, x, jnp.full((x.shape[0],), t, jnp.float32), eps)

        return jax.lax.map(level, (jnp.arange(ts.shape[0]), ts))


@OBJECTIVES.register("denoising", options=DenoisingOptions)
def denoising(options: DenoisingOptions, ctx: ObjectiveContext) -> Denoising:
    return Denoising(ctx.schedule, ctx.parameterization, options, ctx.network)
