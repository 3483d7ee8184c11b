"""Consistency distillation (CD, Song et al. 2023, Algorithm 2).

The teacher is any trained run of this codebase (objective.consistency_distillation.teacher: its
workdir; any schedule and parameterization, its sampling EMA params, clipped as it samples). On
the N-point EDM grid of the student's levels, for a pair s_n < s_{n+1} drawn uniformly:

    x_{n+1} = x + s_{n+1} z,   x_hat_n = one teacher ODE step from s_{n+1} to s_n (Heun or Euler),
    loss = d(f_theta(x_{n+1}, s_{n+1}), f_target(x_hat_n, s_n)),

with the target network theta^- <- mu theta^- + (1 - mu) theta (objective state, checkpointed
with the teacher's params, so a resumed run needs nothing but its own workdir). The paper's
CIFAR-10 settings are the defaults: N = 18, mu = 0.95, Heun; d is pseudo-Huber (iCT's) rather
than LPIPS, whose VGG weights cannot be loaded offline ('l2' is the paper's other choice)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.core import consistency as cm
from diffjax.errors import ConfigError
from diffjax.objectives import OBJECTIVES, ObjectiveContext, Teacher
from diffjax.objectives.consistency import METRICS, ConsistencyBase, check_consistency_parts
from diffjax.options import check, choice

KEY = "objective.consistency_distillation"


@dataclasses.dataclass(frozen=True)
class ConsistencyDistillationOptions:
    """teacher: the workdir of the trained teacher run; num_scales: N of the EDM grid; rho: its
    exponent; solver: the teacher's ODE step, heun | euler (= DDIM); target_ema: mu (0: the
    student under stop_gradient); metric: pseudo_huber | l2; huber_c: 0 is iCT's
    0.00054 sqrt(dim)."""

    teacher: str = ""
    num_scales: int = 18
    rho: float = 7.0
    solver: str = "heun"
    target_ema: float = 0.95
    metric: str = "pseudo_huber"
    huber_c: float = 0.0

    def __post_init__(self):
        check(self.num_scales >= 2, "num_scales", self.num_scales, "must be >= 2")
        check(self.rho > 0, "rho", self.rho, "must be > 0")
        choice("solver", self.solver, cm.ODE_SOLVERS)
        check(0 <= self.target_ema < 1, "target_ema", self.target_ema, "must be in [0, 1)")
        choice("metric", self.metric, METRICS)
        check(self.huber_c >= 0, "huber_c", self.huber_c, "must be >= 0 (0: iCT's c)")


@dataclasses.dataclass(frozen=True)
class ConsistencyDistillation(ConsistencyBase):
    """See the module docstring. teacher: the loaded run (its params go into the state)."""

    options: ConsistencyDistillationOptions = ConsistencyDistillationOptions()
    teacher: Teacher | None = None

    def levels(self):
        """The N-point EDM grid of the student's levels, increasing: [N] float32."""
        s_min, s_max = self._range
        n = self.options.num_scales
        return cm.karras_levels(n, n, s_min, s_max, self.options.rho)

    def init_state(self, rng, network_params):
        state = {"teacher": self.teacher.params}
        if self.options.target_ema > 0:
            state["target"] = network_params
        return state

    def prepare(self, x, cond, rng, step):
        rng_n, rng_z = jax.random.split(rng)
        n = jax.random.randint(rng_n, (x.shape[0],), 0, self.options.num_scales - 1)
        sigmas = self.levels()
        return {"x": x, "cond": cond, "t_cur": self.t_of(sigmas[n]),
                "t_next": self.t_of(sigmas[n + 1]),
                "z": jax.random.normal(rng_z, x.shape, jnp.float32)}

    def teacher_target_input(self, teacher_params, x, cond, z, t_cur, t_next):
        """x_hat_n: one teacher ODE step from x + s_{n+1} z at s_{n+1} to s_n, as x_t at t_cur
        of the student's schedule: [B,H,W,C]."""
        teacher = dataclasses.replace(self.teacher, params=teacher_params)
        s_cur, s_next = self.level(t_cur), self.level(t_next)
        x_ve = x + s_next.reshape(-1, *([1] * (x.ndim - 1))) * z
        x_ve = cm.ode_step_ve(lambda v, s: teacher.denoise_ve(v, s, cond), x_ve, s_next, s_cur,
                              self.options.solver)
        return self.schedule.alpha(t_cur).reshape(-1, *([1] * (x.ndim - 1))) * x_ve

    def per_example_loss(self, params, apply, state, x, cond, z, t_cur, t_next):
        student = self.consistency_fn(params["network"], apply, cond, self.noisy(x, z, t_next),
                                      t_next)
        x_hat = jax.lax.stop_gradient(
            self.teacher_target_input(state["teacher"], x, cond, z, t_cur, t_next))
        target = jax.lax.stop_gradient(self.consistency_fn(
            self.target_params(params, state), apply, cond, x_hat, t_cur))
        return self.distance(student, target)

    def loss(self, params, apply, inputs, state, step):
        per_example = self.per_example_loss(params, apply, state, inputs["x"], inputs["cond"],
                                            inputs["z"], inputs["t_cur"], inputs["t_next"])
        return jnp.mean(per_example), {}

    def validation_losses(self, params, apply, x, cond, rng, num_levels: int, state=None):
        """The loss of held-out x at K pairs spread evenly over the grid, noise
        z_k = normal(fold_in(rng, k)): [K, B], deterministic."""
        sigmas = self.levels()
        idx = jnp.round(jnp.linspace(0, self.options.num_scales - 2, num_levels)).astype(int)
        t_cur, t_next = self.t_of(sigmas[idx]), self.t_of(sigmas[idx + 1])

        def level(inputs):
            k, tc, tn = inputs
            z = jax.random.normal(jax.random.fold_in(rng, k), x.shape, jnp.float32)
            full = lambda t: jnp.full((x.shape[0],), t, jnp.float32)  # noqa: E731
            return self.per_example_loss(params, apply, state, x, cond, z, full(tc), full(tn))

        return jax.lax.map(level, (jnp.arange(num_levels), t_cur, t_next))


def check_teacher(teacher: Teacher, ctx: ObjectiveContext) -> None:
    """The teacher must make x of the student's shape, with the same classes, and cover the
    student's noise levels."""
    shape = tuple(ctx.x_shape)
    if shape and tuple(teacher.x_shape) != shape:
        raise ConfigError(f"config.{KEY}.teacher={teacher.workdir!r}: the teacher makes x of "
                          f"shape {tuple(teacher.x_shape)}, this run's x is {shape} (match "
                          f"data.image_size and the codec)")
    classes = ctx.conditioning.num_classes if ctx.conditioning is not None else 0
    if teacher.num_classes != classes:
        raise ConfigError(f"config.{KEY}.teacher={teacher.workdir!r}: the teacher is "
                          f"conditioned on {teacher.num_classes} classes, this run on {classes} "
                          f"(match config.conditioning)")
    with jax.ensure_compile_time_eval():
        t01 = jnp.asarray([0.0, 1.0], jnp.float32)
        s = [float(v) for v in ctx.schedule.sigma(t01) / ctx.schedule.alpha(t01)]
        tt = jnp.asarray([0.0, teacher.schedule.t_max], jnp.float32)
        ts = [float(v) for v in teacher.schedule.sigma(tt) / teacher.schedule.alpha(tt)]
    if s[0] < ts[0] * (1 - 1e-3) or s[1] > ts[1] * (1 + 1e-3):
        raise ConfigError(f"config.{KEY}.teacher={teacher.workdir!r}: the student's noise "
                          f"levels [{s[0]:.4g}, {s[1]:.4g}] (config.diffusion) leave the "
                          f"teacher's [{ts[0]:.4g}, {ts[1]:.4g}]; set the student's "
                          f"diffusion.<schedule>.sigma_min / sigma_max inside it")


@OBJECTIVES.register("consistency_distillation", options=ConsistencyDistillationOptions)
def consistency_distillation(options: ConsistencyDistillationOptions,
                             ctx: ObjectiveContext) -> ConsistencyDistillation:
    check_consistency_parts("consistency_distillation", ctx)
    if not options.teacher:
        raise ConfigError(f"config.{KEY}.teacher='' is invalid: name the workdir of a trained "
                          f"run of this codebase, e.g. runs/few_step/teacher")
    if ctx.load_run is None:
        raise ConfigError(f"config.{KEY}: this builder cannot load a teacher run")
    teacher = ctx.load_run(options.teacher, f"{KEY}.teacher")
    check_teacher(teacher, ctx)
    return ConsistencyDistillation(ctx.schedule, ctx.parameterization, ctx.network, options,
                                   teacher)
