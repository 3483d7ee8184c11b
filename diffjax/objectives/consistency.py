"""Consistency training (Song et al. 2023; improved, iCT: Song & Dhariwal 2023).

A consistency model f(x_s, s) maps any point of a probability-flow ODE trajectory to its start;
config.diffusion.parameterization='consistency' makes f(x, s_min) = x exactly. Consistency
training needs no teacher: for a pair of adjacent levels s_i < s_{i+1} of the n-point EDM
discretisation and one noise draw z,

    loss = lambda(s_i) d(f_theta(x + s_{i+1} z, s_{i+1}), f_target(x + s_i z, s_i)),

with iCT's choices as the defaults: d the pseudo-Huber metric with c = 0.00054 sqrt(dim),
lambda = 1 / (s_{i+1} - s_i), the pair drawn from a discretised lognormal (P_mean -1.1,
P_std 2.0), n doubling from s0 = 10 to s1 = 1280 over the run (N(k), eq. 8), and the target
network the student itself under stop_gradient (target_ema = 0). CM's original recipe (an EMA
target, l2) is target_ema > 0, metric='l2'; its target network is objective state, checkpointed
with the rest. Levels are VE-equivalent (s = sigma / alpha), so any continuous schedule works;
the papers use diffusion.schedule='edm' (0.002 .. 80, rho 7), whose grid is exactly this one.
Both network calls of a step share the examples' dropout masks."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core import consistency as cm
from diffjax.core.parameterizations import bcast
from diffjax.errors import ConfigError
from diffjax.objectives import OBJECTIVES, Objective, ObjectiveContext
from diffjax.options import check, choice

METRICS = ("pseudo_huber", "l2")
LEVEL_WEIGHTINGS = ("ict", "uniform")


@dataclasses.dataclass(frozen=True)
class ConsistencyTrainingOptions:
    """s0, s1: the curriculum's first and last discretisation (N(k) = min(s0 2^floor(k/K'), s1)
    + 1); curriculum_steps: K of N(k) (0: the run's training.num_steps); rho: of the EDM grid;
    p_mean, p_std: the lognormal over level pairs; metric: pseudo_huber | l2 (squared, mean over
    pixels); huber_c: the pseudo-Huber c (0: iCT's 0.00054 sqrt(dim)); weighting: ict
    (1 / (s_{i+1} - s_i)) | uniform; target_ema: the target network's EMA rate (0: iCT's
    stop_gradient of the student)."""

    s0: int = 10
    s1: int = 1280
    curriculum_steps: int = 0
    rho: float = 7.0
    p_mean: float = -1.1
    p_std: float = 2.0
    metric: str = "pseudo_huber"
    huber_c: float = 0.0
    weighting: str = "ict"
    target_ema: float = 0.0

    def __post_init__(self):
        check(self.s0 >= 1, "s0", self.s0, "must be >= 1")
        check(self.s1 >= self.s0, "s1", self.s1, f"must be >= s0 (={self.s0})")
        check(self.curriculum_steps >= 0, "curriculum_steps", self.curriculum_steps,
              "must be >= 0 (0: training.num_steps)")
        check(self.rho > 0, "rho", self.rho, "must be > 0")
        check(self.p_std > 0, "p_std", self.p_std, "must be > 0")
        choice("metric", self.metric, METRICS)
        check(self.huber_c >= 0, "huber_c", self.huber_c, "must be >= 0 (0: iCT's c)")
        choice("weighting", self.weighting, LEVEL_WEIGHTINGS)
        check(0 <= self.target_ema < 1, "target_ema", self.target_ema, "must be in [0, 1)")


def check_consistency_parts(name: str, ctx: ObjectiveContext) -> None:
    """A consistency objective needs a continuous schedule and the consistency parameterization."""
    if getattr(ctx.parameterization, "name", None) != "consistency":
        raise ConfigError(f"config.objective.name={name!r} trains a consistency model: "
                          f"config.diffusion.parameterization must be 'consistency', not "
                          f"{getattr(ctx.parameterization, 'name', ctx.parameterization)!r}")
    if getattr(ctx.schedule, "is_discrete", False):
        raise ConfigError(f"config.objective.name={name!r} needs a continuous schedule "
                          f"(config.diffusion.schedule='edm' is the papers'), not the discrete "
                          f"{ctx.schedule.name!r}")


@dataclasses.dataclass(frozen=True)
class ConsistencyBase(Objective):
    """What consistency objectives share: the consistency function of a network, the metric,
    and the optional EMA target network (objective state)."""

    schedule: object
    parameterization: object
    network: object = None

    def _net(self, params, apply, cond):
        out_channels = self.network.out_channels if self.network is not None else None

        def net(x, c_noise):
            out = apply(params, x, c_noise, cond)
            return out[..., :out_channels] if out_channels else out

        return net

    def consistency_fn(self, params, apply, cond, x_t, t):
        """f(x_t, t) [B,H,W,C] for times t [B] (f(x, 0) = x exactly)."""
        schedule, param = self.schedule, self.parameterization
        out = param.network_output(self._net(params, apply, cond), x_t, t, schedule)
        return param.x0_eps(x_t, out, schedule.alpha(t), schedule.sigma(t))[0]

    def level(self, t):
        """The VE-equivalent level s = sigma(t) / alpha(t): [B] float32."""
        return self.schedule.sigma(t) / self.schedule.alpha(t)

    def noisy(self, x0, z, t):
        """x_t = alpha(t) (x0 + s(t) z): [B,H,W,C]."""
        return bcast(self.schedule.alpha(t), x0) * (x0 + bcast(self.level(t), x0) * z)

    @property
    def _range(self):
        """(s_min, s_max): the levels at t = 0 and t = 1, as Python floats (also while tracing)."""
        with jax.ensure_compile_time_eval():
            s = self.level(jnp.asarray([0.0, 1.0], jnp.float32))
            return float(s[0]), float(s[1])

    def t_of(self, sigma):
        """The time of VE-equivalent level sigma, clipped to [0, 1]: [B] float32."""
        return jnp.clip(self.schedule.t_from_logsnr(-2.0 * jnp.log(sigma)), 0.0, 1.0)

    def distance(self, a, b):
        """The metric per example [B]."""
        o = self.options
        if o.metric == "l2":
            return jnp.mean((a - b).reshape(a.shape[0], -1) ** 2, axis=1)
        c = o.huber_c or cm.pseudo_huber_c(int(np.prod(a.shape[1:])))
        return cm.pseudo_huber(a, b, c)

    def target_params(self, params, state):
        if self.options.target_ema > 0:
            return state["target"]
        return jax.lax.stop_gradient(params["network"])

    def init_state(self, rng, network_params):
        return {"target": network_params} if self.options.target_ema > 0 else {}

    def after_update(self, state, params, step):
        mu = self.options.target_ema
        if mu <= 0:
            return state
        return {**state, "target": jax.tree.map(lambda t, p: mu * t + (1 - mu) * p,
                                                state["target"], params["network"])}


@dataclasses.dataclass(frozen=True)
class ConsistencyTraining(ConsistencyBase):
    """See the module docstring."""

    options: ConsistencyTrainingOptions = ConsistencyTrainingOptions()
    num_steps: int = 0

    def num_scales(self, step):
        """N(k) at train step `step` (int32, may be traced)."""
        o = self.options
        return cm.num_scales(step, o.curriculum_steps or self.num_steps or 1, o.s0, o.s1)

    def levels(self, n):
        """The n-point discretisation padded to s1 + 1 entries: [s1 + 1] float32."""
        s_min, s_max = self._range
        return cm.karras_levels(n, self.options.s1 + 1, s_min, s_max, self.options.rho)

    def prepare(self, x, cond, rng, step):
        o = self.options
        n = self.num_scales(step)
        sigmas = self.levels(n)
        rng_i, rng_z = jax.random.split(rng)
        logits = cm.lognormal_pair_logits(sigmas, n, o.p_mean, o.p_std)
        i = jax.random.categorical(rng_i, logits, shape=(x.shape[0],))
        z = jax.random.normal(rng_z, x.shape, jnp.float32)
        return {"x": x, "cond": cond, "t_cur": self.t_of(sigmas[i]),
                "t_next": self.t_of(sigmas[i + 1]), "z": z}

    def per_example_loss(self, params, apply, state, x, cond, z, t_cur, t_next):
        """The weighted consistency loss per example [B] of the level pairs (t_cur, t_next)."""
        student = self.consistency_fn(params["network"], apply, cond, self.noisy(x, z, t_next),
                                      t_next)
        target = jax.lax.stop_gradient(self.consistency_fn(
            self.target_params(params, state), apply, cond, self.noisy(x, z, t_cur), t_cur))
        if self.options.weighting == "ict":
            weight = 1.0 / (self.level(t_next) - self.level(t_cur))
        else:
            weight = jnp.ones_like(t_cur)
        return weight * self.distance(student, target)

    def loss(self, params, apply, inputs, state, step):
        per_example = self.per_example_loss(params, apply, state, inputs["x"], inputs["cond"],
                                            inputs["z"], inputs["t_cur"], inputs["t_next"])
        return jnp.mean(per_example), {
            "num_scales": self.num_scales(step).astype(jnp.float32)}

    def validation_pairs(self, num_levels: int):
        """K fixed pair indices of the final discretisation (s1 + 1 levels): the midpoint
        quantiles of the lognormal pair distribution. Returns (t_cur [K], t_next [K])."""
        o = self.options
        n = o.s1 + 1
        with jax.ensure_compile_time_eval():
            sigmas = self.levels(n)
            probs = np.asarray(jax.nn.softmax(cm.lognormal_pair_logits(sigmas, n, o.p_mean,
                                                                       o.p_std)), np.float64)
            cdf = np.cumsum(probs)
            q = (np.arange(num_levels) + 0.5) / num_levels
            idx = np.minimum(np.searchsorted(cdf, q), n - 2)
            return self.t_of(sigmas[idx]), self.t_of(sigmas[idx + 1])

    def validation_losses(self, params, apply, x, cond, rng, num_levels: int, state=None):
        """The loss of held-out x at K fixed level pairs, noise z_k = normal(fold_in(rng, k)):
        [K, B], deterministic."""
        t_cur, t_next = self.validation_pairs(num_levels)

        def level(inputs):
            k, tc, tn = inputs
            z = jax.random.normal(jax.random.fold_in(rng, k), x.shape, jnp.float32)
            full = lambda t: jnp.full((x.shape[0],), t, jnp.float32)  # noqa: E731
            return self.per_example_loss(params, apply, state, x, cond, z, full(tc), full(tn))

        return jax.lax.map(level, (jnp.arange(num_levels), t_cur, t_next))


@OBJECTIVES.register("consistency_training", options=ConsistencyTrainingOptions)
def consistency_training(options: ConsistencyTrainingOptions,
                         ctx: ObjectiveContext) -> ConsistencyTraining:
    check_consistency_parts("consistency_training", ctx)
    return ConsistencyTraining(ctx.schedule, ctx.parameterization, ctx.network, options,
                               ctx.num_steps)
