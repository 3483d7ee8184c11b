"""The denoising objective: E_t w(t) ||F(c_in x_t, c_noise(t)) - target||^2 with
x_t = alpha x0 + sigma eps, for any schedule, parameterization (eps, x0, v, edm) and weighting
(simple, snr, min_snr, edm), with uniform or lognormal times and a noise-level curriculum.

vlb_weight > 0 adds iDDPM's L_hybrid term (Nichol & Dhariwal 2021, eq. 16, lambda = 0.001) for
a network with a learned variance (learn_sigma): vlb_weight T L_t, L_t the VLB term of the drawn
step (core.vlb, in bits/dim) with the mean's output stop-gradient'ed, so only L_simple trains
the mean and only L_vlb the variance. T E_t[L_t] = L_vlb, so this is improved-diffusion's
default (rescale_learned_sigmas: RESCALED_MSE, `terms["vb"] *= num_timesteps / 1000`)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.core import time_sampling, vlb
from diffjax.core.parameterizations import bcast
from diffjax.core.time_sampling import TIME_SAMPLINGS, Curriculum
from diffjax.core.weightings import WEIGHTINGS, loss_weight
from diffjax.errors import ConfigError
from diffjax.objectives import OBJECTIVES, Objective, ObjectiveContext
from diffjax.options import check, choice


@dataclasses.dataclass(frozen=True)
class DenoisingOptions:
    """weighting (min_snr_gamma for min_snr); time_sampling uniform | lognormal (p_mean, p_std:
    EDM's ln sigma ~ N(p_mean, p_std^2)); curriculum_steps > 0 moves the time distribution from
    the *_start values to its own over that many steps (see core.time_sampling.Curriculum);
    vlb_weight: L_hybrid's lambda (iDDPM: 0.001; 0: L_simple only), for a learned variance."""

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
    vlb_weight: float = 0.0

    def __post_init__(self):
        choice("weighting", self.weighting, WEIGHTINGS)
        check(self.vlb_weight >= 0, "vlb_weight", self.vlb_weight,
              "must be >= 0 (0: no VLB term; iDDPM's L_hybrid: 0.001)")
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
    network: where given, its extra outputs are split off the prediction (the variance feeds the
    VLB term)."""

    schedule: object
    parameterization: object
    options: DenoisingOptions = DenoisingOptions()
    network: object = None

    def _split(self, output):
        """The network output -> (the prediction, the variance v or None)."""
        net = self.network
        if net is None or not net.extra_outputs:
            return output, None
        main, extras = net.split_output(output)
        return main, extras.get("variance")

    def vlb_bits_per_dim(self, x0, x_t, t, prediction, variance):
        """L_t of the drawn steps in bits/dim [B] (improved-diffusion's _vb_terms_bpd with
        clip_denoised=False): the KL at step index i >= 1, the decoder's NLL at i = 0, with the
        mean from the stop-gradient'ed prediction and iDDPM's eq. 15 variance from v."""
        schedule, param = self.schedule, self.parameterization
        tables = vlb.PosteriorTables.from_betas(schedule.betas)
        index = jnp.round(jnp.asarray(t, jnp.float32) * schedule.num_timesteps - 1.0)
        index = jnp.clip(index, 0, schedule.num_timesteps - 1).astype(jnp.int32)
        frozen = jax.lax.stop_gradient(prediction)
        x0_hat = param.x0_eps(x_t, frozen, schedule.alpha(t), schedule.sigma(t))[0]
        log_var = vlb.model_log_variance(tables, index, "learned", variance)
        nats = vlb.term_nats(tables, x0, x_t, index, x0_hat, log_var, "discretized")
        return nats / (x0[0].size * jnp.log(2.0))

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
        net: (network input [B,H,W,C], c_noise [B]) -> the network's output [B,H,W,C + extra
        channels]; with vlb_weight > 0, plus vlb_weight T L_t (see the module docstring)."""
        schedule, param, o = self.schedule, self.parameterization, self.options
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        x_t = bcast(alpha, x0) * x0 + bcast(sigma, x0) * eps
        output, variance = self._split(param.network_output(net, x_t, t, schedule))
        mse = jnp.mean((output - param.target(x0, eps, alpha, sigma)) ** 2,
                       axis=tuple(range(1, x0.ndim)))
        weight = loss_weight(o.weighting, param, alpha, sigma, o.min_snr_gamma, param.sigma_data)
        vlb_weight = getattr(o, "vlb_weight", 0.0)
        if not vlb_weight:
            return weight * mse
        vlb_term = self.vlb_bits_per_dim(x0, x_t, t, output, variance)
        return weight * mse + vlb_weight * schedule.num_timesteps * vlb_term

    def loss(self, params, apply, inputs, state, step):
        net = lambda x, c_noise: apply(params["network"], x, c_noise, inputs["cond"])  # noqa: E731
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
        net = lambda x_in, c_noise: apply(params["network"], x_in, c_noise, cond)  # noqa: E731
        ts = jnp.asarray(self.validation_times(num_levels, x.shape), jnp.float32)

        def level(inputs):
            k, t = inputs
            eps = jax.random.normal(jax.random.fold_in(rng, k), x.shape, jnp.float32)
            return self.per_example_loss(net, x, jnp.full((x.shape[0],), t, jnp.float32), eps)

        return jax.lax.map(level, (jnp.arange(ts.shape[0]), ts))


@OBJECTIVES.register("denoising", options=DenoisingOptions)
def denoising(options: DenoisingOptions, ctx: ObjectiveContext) -> Denoising:
    if options.vlb_weight > 0:
        check_vlb(options.vlb_weight, ctx.schedule, ctx.network)
    return Denoising(ctx.schedule, ctx.parameterization, options, ctx.network)


def check_vlb(vlb_weight: float, schedule, network) -> None:
    """L_hybrid needs a discrete beta table and a network with a variance output."""
    bad = f"config.objective.denoising.vlb_weight={vlb_weight} is invalid:"
    if not schedule.is_discrete:
        raise ConfigError(f"{bad} the VLB term is the discrete-time DDPM bound, but "
                          f"config.diffusion.schedule={schedule.name!r}; allowed: linear, "
                          f"cosine, sigmoid (or vlb_weight=0)")
    if network is None or not any(name == "variance" for name, _ in network.extra_outputs):
        raise ConfigError(f"{bad} it trains a learned variance, which the network does not "
                          f"output: set config.model.<unet|dit>.learn_sigma=True (or "
                          f"vlb_weight=0)")
