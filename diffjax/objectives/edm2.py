"""EDM2's loss with learned uncertainty weighting (Karras et al. 2024, Sec. 2 "Loss weighting",
eq. 21; NVlabs/edm2 training/training_loop.py EDM2Loss): per example,

    L = lambda(sigma) / e^u(sigma) ||D(x + n; sigma) - x||^2 + u(sigma),
    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2,  ln sigma ~ N(P_mean, P_std^2)

with ||.||^2 the mean over pixels (EDM2 sums them; Adam does not see the difference but for its
eps) and sigma the VE-equivalent level sigma / alpha, so any schedule and parameterization
works (EDM2's is diffusion.schedule='edm' with parameterization='edm'). u(sigma) is a learned
log-variance, EDM2's `logvar_linear(logvar_fourier(c_noise))` with c_noise = ln(sigma) / 4:
MP Fourier features (128) -> one MPConv output (models.edm2.LogvarHead). For a fixed weighted
error e the loss e e^-u + u is least at u = ln e, so u tracks the log of the expected weighted
error at each level and the effective weight lambda / e^u equalises the levels' contributions.

The uncertainty head is this objective's own trained group 'logvar' (EDM2 trains it with the
network's Adam, as part of Precond's parameters): Adam with EDM2's betas (0.9, 0.99), the
learning rate logvar_lr with EDM2's schedule (linear warmup over logvar_warmup_steps, then
lr / sqrt(max(step / logvar_ref_steps, 1)); ref 0: no decay). It is checkpointed with the state,
not EMA-averaged (sampling never reads it). The validation loss is the lambda-weighted error
without u, EDM's loss, comparable across runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import optax

from diffjax.objectives import OBJECTIVES, Objective, ObjectiveContext
from diffjax.objectives.denoising import Denoising, DenoisingOptions
from diffjax.options import check


def edm2_learning_rate(lr: float, ref_steps: int, warmup_steps: int):
    """EDM2's learning_rate_schedule in steps (training_loop.py): alpha_ref / sqrt(max(step /
    ref_steps, 1)) (eq. 15's inverse square-root decay; ref_steps 0: none), times the linear
    ramp min(step / warmup_steps, 1) (warmup_steps 0: none). Returns an optax schedule."""

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        out = jnp.asarray(lr, jnp.float32)
        if ref_steps > 0:
            out = out / jnp.sqrt(jnp.maximum(step / ref_steps, 1.0))
        if warmup_steps > 0:
            out = out * jnp.minimum(step / warmup_steps, 1.0)
        return out

    return schedule


def uncertainty_loss(weighted_error, logvar):
    """EDM2 eq. 21 per example: weighted_error / e^logvar + logvar. weighted_error: [B] the
    lambda-weighted mean squared error of D; logvar: [B] u(sigma). Least over u at
    u = ln(weighted_error)."""
    return weighted_error * jnp.exp(-logvar) + logvar


@dataclasses.dataclass(frozen=True)
class EDM2LossOptions:
    """p_mean, p_std: ln sigma ~ N(p_mean, p_std^2) (EDM2 ImageNet-512: -0.4, 1.0; ImageNet-64:
    -0.8, 1.6); logvar_channels: the uncertainty head's Fourier features (EDM2: 128);
    logvar_lr, logvar_ref_steps, logvar_warmup_steps: its Adam's schedule (see the module
    docstring; EDM2 XS: the network's 0.012, 70k, 10 Mimg / batch)."""

    p_mean: float = -0.4
    p_std: float = 1.0
    logvar_channels: int = 128
    logvar_lr: float = 1e-2
    logvar_ref_steps: int = 0
    logvar_warmup_steps: int = 0

    def __post_init__(self):
        check(self.p_std > 0, "p_std", self.p_std, "must be > 0")
        check(isinstance(self.logvar_channels, int) and self.logvar_channels >= 1,
              "logvar_channels", self.logvar_channels, "must be an int >= 1")
        check(self.logvar_lr > 0, "logvar_lr", self.logvar_lr, "must be > 0")
        check(self.logvar_ref_steps >= 0, "logvar_ref_steps", self.logvar_ref_steps,
              "must be >= 0 (0: no decay)")
        check(self.logvar_warmup_steps >= 0, "logvar_warmup_steps", self.logvar_warmup_steps,
              "must be >= 0")


@dataclasses.dataclass(frozen=True)
class EDM2Loss(Objective):
    """See the module docstring. denoising: the lognormal-sigma, lambda-weighted denoising
    objective whose per-example error this one reweights; head: the LogvarHead module."""

    denoising: Denoising
    head: Any
    options: EDM2LossOptions = EDM2LossOptions()

    def init_params(self, rng, network_params) -> dict:
        return {"logvar": self.head.init(rng, jnp.zeros((1,), jnp.float32))["params"]}

    def optimizers(self) -> dict:
        o = self.options
        lr = edm2_learning_rate(o.logvar_lr, o.logvar_ref_steps, o.logvar_warmup_steps)
        return {"logvar": optax.adam(lr, b1=0.9, b2=0.99)}

    def c_noise(self, t):
        """EDM2's c_noise = ln(sigma) / 4 at the VE-equivalent level sigma / alpha: [B]."""
        schedule = self.denoising.schedule
        return 0.25 * jnp.log(schedule.sigma(t) / schedule.alpha(t))

    def logvar(self, logvar_params, t):
        """u(sigma(t)): [B] float32."""
        return self.head.apply({"params": logvar_params}, self.c_noise(t))

    def prepare(self, x, cond, rng, step):
        return self.denoising.prepare(x, cond, rng, step)

    def loss(self, params, apply, inputs, state, step):
        net = lambda x, c_noise: apply(params["network"], x, c_noise, inputs["cond"])  # noqa: E731
        weighted = self.denoising.per_example_loss(net, inputs["x"], inputs["t"], inputs["eps"])
        logvar = self.logvar(params["logvar"], inputs["t"])
        loss = jnp.mean(uncertainty_loss(weighted, logvar))
        return loss, {"weighted_mse": jnp.mean(weighted), "logvar": jnp.mean(logvar)}

    def validation_losses(self, params, apply, x, cond, rng, num_levels: int, state=None):
        """The lambda-weighted error (EDM's loss, no u) at the lognormal's midpoint quantiles:
        [K, B]."""
        return self.denoising.validation_losses(params, apply, x, cond, rng, num_levels, state)


@OBJECTIVES.register("edm2", options=EDM2LossOptions)
def edm2(options: EDM2LossOptions, ctx: ObjectiveContext) -> EDM2Loss:
    from diffjax.models.edm2 import LogvarHead

    denoising = Denoising(ctx.schedule, ctx.parameterization,
                          DenoisingOptions(weighting="edm", time_sampling="lognormal",
                                           p_mean=options.p_mean, p_std=options.p_std),
                          ctx.network)
    return EDM2Loss(denoising, LogvarHead(options.logvar_channels), options)
