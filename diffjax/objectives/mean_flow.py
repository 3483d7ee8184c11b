"""MeanFlow (Geng et al. 2025): one-step generation from scratch by regressing the average
velocity u(z_t, r, t) of the flow ODE on the MeanFlow identity (see core.mean_flow):

    loss = w ||u_theta(z_t, r, t) - sg(v - (t - r) (v . grad_z u_theta + d_t u_theta))||^2,

z_t = alpha(t) x0 + sigma(t) eps, v = alpha'(t) x0 + sigma'(t) eps (eps - x0 on
diffusion.schedule='flow_linear', the paper's path), the total derivative by one jax.jvp through
the network, w = sg(1 / (||Delta||^2 + c)^p) the adaptive weight. Needs
diffusion.parameterization='mean_velocity' (a network of two noise inputs, t and t - r) and
samples with sampling.sampler='mean_flow' in 1, 2, ... steps; at r = t the model is a velocity,
so flow_euler / flow_heun sample it too.

Defaults are the paper's ImageNet choices (Table 1: logit-normal(-0.4, 1.0), 25% of pairs with
r != t, p = 1, c = 1e-3); its CIFAR-10 recipe (logit-normal(-2.0, 2.0), 75%, p = 0.75) is
configs/mnist_meanflow.py's. The loss is summed over the image, as the authors' code does."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.core import mean_flow as mf
from diffjax.core import time_sampling
from diffjax.core.parameterizations import bcast
from diffjax.errors import ConfigError
from diffjax.objectives import OBJECTIVES, Objective, ObjectiveContext
from diffjax.options import check


@dataclasses.dataclass(frozen=True)
class MeanFlowOptions:
    """p_mean, p_std: the logit-normal of both times; ratio: the fraction of examples with
    r != t (the rest train the instantaneous velocity, r = t); power: the adaptive weight's p
    (0: the plain squared L2 loss); c: its constant."""

    p_mean: float = -0.4
    p_std: float = 1.0
    ratio: float = 0.25
    power: float = 1.0
    c: float = 1e-3

    def __post_init__(self):
        check(self.p_std > 0, "p_std", self.p_std, "must be > 0")
        check(0.0 <= self.ratio <= 1.0, "ratio", self.ratio, "must be in [0, 1]")
        check(self.power >= 0, "power", self.power, "must be >= 0 (0: plain squared L2)")
        check(self.c > 0, "c", self.c, "must be > 0")


@dataclasses.dataclass(frozen=True)
class MeanFlow(Objective):
    """See the module docstring."""

    schedule: object
    parameterization: object
    network: object = None
    options: MeanFlowOptions = MeanFlowOptions()

    def average_velocity_fn(self, params, apply, cond):
        """u(z [B,H,W,C], r [B], t [B]) -> [B,H,W,C]: the network through the
        parameterization's network_output, its extra outputs dropped."""
        out_channels = self.network.out_channels if self.network is not None else None

        def net(x, c_noise):
            out = apply(params, x, c_noise, cond)
            return out[..., :out_channels] if out_channels else out

        return lambda z, r, t: self.parameterization.network_output(net, z, t, self.schedule,
                                                                     r=r)

    def velocity(self, x0, eps, t):
        """(z_t, v): the interpolant and its conditional velocity, [B,H,W,C] each."""
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        rate_alpha, rate_sigma = self.schedule.rates(alpha, sigma)
        z = bcast(alpha, x0) * x0 + bcast(sigma, x0) * eps
        return z, bcast(rate_alpha, x0) * x0 + bcast(rate_sigma, x0) * eps

    def prepare(self, x, cond, rng, step):
        o = self.options
        rng_t, rng_eps = jax.random.split(rng)
        r, t = mf.sample_times(rng_t, x.shape[0], o.p_mean, o.p_std, o.ratio)
        eps = jax.random.normal(rng_eps, x.shape, jnp.float32)
        return {"x": x, "cond": cond, "r": r, "t": t, "eps": eps}

    def per_example_loss(self, params, apply, x, cond, eps, r, t):
        """(the adaptively weighted loss [B], ||Delta||^2 [B])."""
        u_fn = self.average_velocity_fn(params["network"], apply, cond)
        z, v = self.velocity(x, eps, t)
        u, dudt = mf.total_derivative(u_fn, z, r, t, v)
        u_tgt = jax.lax.stop_gradient(mf.target(v, dudt, r, t))
        squared = jnp.sum((u - u_tgt).reshape(x.shape[0], -1) ** 2, axis=1)
        weight = jax.lax.stop_gradient(mf.adaptive_weight(squared, self.options.power,
                                                          self.options.c))
        return weight * squared, squared

    def loss(self, params, apply, inputs, state, step):
        weighted, squared = self.per_example_loss(params, apply, inputs["x"], inputs["cond"],
                                                  inputs["eps"], inputs["r"], inputs["t"])
        return jnp.mean(weighted), {"squared_error": jnp.mean(squared)}

    def validation_times(self, num_levels: int):
        """K fixed (r, t): t the midpoint quantiles of the logit-normal, r = 0 (the one-step
        map). Two [K] float32."""
        o = self.options
        t = time_sampling.flow_time_quantiles(num_levels, "logit_normal", o.p_mean, o.p_std)
        return jnp.zeros(num_levels, jnp.float32), t

    def validation_losses(self, params, apply, x, cond, rng, num_levels: int, state=None):
        """||Delta||^2 of held-out x at the K fixed (r, t), noise normal(fold_in(rng, k)):
        [K, B], deterministic."""
        rs, ts = self.validation_times(num_levels)

        def level(inputs):
            k, r, t = inputs
            eps = jax.random.normal(jax.random.fold_in(rng, k), x.shape, jnp.float32)
            full = lambda s: jnp.full((x.shape[0],), s, jnp.float32)  # noqa: E731
            return self.per_example_loss(params, apply, x, cond, eps, full(r), full(t))[1]

        return jax.lax.map(level, (jnp.arange(num_levels), rs, ts))


@OBJECTIVES.register("mean_flow", options=MeanFlowOptions)
def mean_flow(options: MeanFlowOptions, ctx: ObjectiveContext) -> MeanFlow:
    name = getattr(ctx.parameterization, "name", ctx.parameterization)
    if name != "mean_velocity":
        raise ConfigError(f"config.objective.name='mean_flow' trains an average velocity: "
                          f"config.diffusion.parameterization must be 'mean_velocity', not "
                          f"{name!r}")
    if getattr(ctx.schedule, "is_discrete", False):
        raise ConfigError(f"config.objective.name='mean_flow' needs a continuous schedule "
                          f"(config.diffusion.schedule='flow_linear' is the paper's), not the "
                          f"discrete {ctx.schedule.name!r}")
    return MeanFlow(ctx.schedule, ctx.parameterization, ctx.network, options)
