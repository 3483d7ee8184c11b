"""Progressive distillation (PD, Salimans & Ho 2022, Algorithm 2): a student learns to take one
DDIM step where its teacher takes two, halving the sampling steps per round.

The teacher (objective.progressive_distillation.teacher) is a trained run of this codebase on
the same schedule: the original diffusion model for round 1, the previous round's workdir for
the next (it must then have been distilled for 2 * student_steps). The student starts from the
teacher's EMA params (init_from_teacher) and is sampled with DDIM on the 'trailing' grid of
student_steps times, whose every other point the teacher's 2 * student_steps grid contains. For
a student time t (uniform over its grid), the teacher's next two grid times t' and t'' (t'' is
clean data after the last), and z_t = alpha_t x + sigma_t eps:

    z_t'  = DDIM(z_t  -> t',  x_hat_teacher(z_t)),   z_t'' = DDIM(z_t' -> t'', x_hat_teacher(z_t')),
    x~    = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t),

the x0 whose one DDIM step from z_t lands on z_t''; loss = max(SNR_t, 1) ||x~ - x_hat(z_t)||^2
(PD's truncated-SNR weighting, 'snr_plus_one' is its other). PD's parameterization is v
(diffusion.parameterization='v'); any works. The teacher's x0 is clipped as it samples."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core.parameterizations import bcast
from diffjax.errors import ConfigError
from diffjax.objectives import OBJECTIVES, Objective, ObjectiveContext, Teacher
from diffjax.options import check, choice
from diffjax.samplers.grids import time_grid

KEY = "objective.progressive_distillation"
PD_WEIGHTINGS = ("truncated_snr", "snr_plus_one")
SPACING = "trailing"


@dataclasses.dataclass(frozen=True)
class ProgressiveDistillationOptions:
    """teacher: the teacher run's workdir; student_steps: the DDIM steps the student learns
    (the teacher takes twice as many); weighting: truncated_snr (max(SNR, 1)) | snr_plus_one;
    init_from_teacher: start from the teacher's EMA params (PD's rule; needs the same network)."""

    teacher: str = ""
    student_steps: int = 4
    weighting: str = "truncated_snr"
    init_from_teacher: bool = True

    def __post_init__(self):
        check(self.student_steps >= 1, "student_steps", self.student_steps, "must be >= 1")
        choice("weighting", self.weighting, PD_WEIGHTINGS)


def ddim_step(z_t, x0, alpha_t, sigma_t, alpha_s, sigma_s):
    """DDIM (eta 0): z_s = alpha_s x0 + sigma_s (z_t - alpha_t x0) / sigma_t. [B,H,W,C]; the
    coefficients [B]."""
    return bcast(alpha_s, z_t) * x0 + bcast(sigma_s / sigma_t, z_t) * (z_t - bcast(alpha_t, z_t)
                                                                        * x0)


def pd_target(z_t, x0_first, x0_second, coefs):
    """PD's x~ from the teacher's two x0 predictions: at (z_t, t) and at z_t' (see the module
    docstring). coefs: (alpha, sigma) at t, t', t'' ([B] each, six arrays). Returns
    (x~, z_t'') [B,H,W,C]."""
    a_t, s_t, a_1, s_1, a_2, s_2 = coefs
    z_1 = ddim_step(z_t, x0_first, a_t, s_t, a_1, s_1)
    z_2 = ddim_step(z_1, x0_second(z_1), a_1, s_1, a_2, s_2)
    ratio = s_2 / s_t
    return (z_2 - bcast(ratio, z_t) * z_t) / bcast(a_2 - ratio * a_t, z_t), z_2


@dataclasses.dataclass(frozen=True)
class ProgressiveDistillation(Objective):
    """See the module docstring."""

    schedule: object
    parameterization: object
    network: object = None
    options: ProgressiveDistillationOptions = ProgressiveDistillationOptions()
    teacher: Teacher | None = None

    def grids(self):
        """(student times [K], teacher times [2K]) as float32 arrays."""
        k = self.options.student_steps
        return (time_grid(self.schedule, k, SPACING), time_grid(self.schedule, 2 * k, SPACING))

    def coefficients(self, index):
        """(alpha, sigma) at the student time ts[i], the teacher's t' and t'' (clean after the
        last) for grid indices `index` [B]: six [B] arrays."""
        student, teacher = self.grids()
        t1 = jnp.asarray(teacher[1::2])[index]
        t2_all = np.append(teacher[2::2], 0.0)
        t = jnp.asarray(student)[index]
        clean = jnp.asarray(np.arange(len(t2_all)) == len(t2_all) - 1)[index]
        t2 = jnp.asarray(t2_all, jnp.float32)[index]
        sched = self.schedule
        a_2 = jnp.where(clean, 1.0, sched.alpha(jnp.where(clean, t, t2)))
        s_2 = jnp.where(clean, 0.0, sched.sigma(jnp.where(clean, t, t2)))
        return t, t1, (sched.alpha(t), sched.sigma(t), sched.alpha(t1), sched.sigma(t1), a_2, s_2)

    def initial_network_params(self, network_params):
        if not self.options.init_from_teacher:
            return network_params
        mine = jax.tree.map(lambda x: (x.shape, x.dtype), network_params)
        theirs = jax.tree.map(lambda x: (x.shape, x.dtype), self.teacher.params)
        if mine != theirs:
            raise ConfigError(f"config.{KEY}.init_from_teacher=True: the student's network is "
                              f"not the teacher's ({self.teacher.workdir}); use the teacher's "
                              f"config.model, or set init_from_teacher=False")
        return self.teacher.params

    def init_state(self, rng, network_params):
        return {"teacher": self.teacher.params}

    def check_sampling(self, sampler: str, num_steps: int, spacing: str) -> None:
        k = self.options.student_steps
        if num_steps != k or spacing != SPACING:
            raise ConfigError(f"config.sampling.num_steps={num_steps} with spacing={spacing!r}: "
                              f"this model was distilled for {k} DDIM steps on the "
                              f"'{SPACING}' grid ({KEY}.student_steps={k}); sample with "
                              f"--config.sampling.num_steps={k} "
                              f"--config.sampling.spacing={SPACING}")

    def prepare(self, x, cond, rng, step):
        rng_i, rng_eps = jax.random.split(rng)
        return {"x": x, "cond": cond,
                "index": jax.random.randint(rng_i, (x.shape[0],), 0,
                                            self.options.student_steps),
                "eps": jax.random.normal(rng_eps, x.shape, jnp.float32)}

    def target(self, teacher_params, x, eps, index, cond):
        """(z_t [B,H,W,C], t [B], x~ [B,H,W,C]) for grid indices `index`."""
        teacher = dataclasses.replace(self.teacher, params=teacher_params)
        t, t1, coefs = self.coefficients(index)
        z_t = bcast(coefs[0], x) * x + bcast(coefs[1], x) * eps
        x_tilde, _ = pd_target(z_t, teacher.denoise(z_t, t, cond),
                               lambda z_1: teacher.denoise(z_1, t1, cond), coefs)
        return z_t, t, jax.lax.stop_gradient(x_tilde)

    def per_example_loss(self, params, apply, state, x, cond, eps, index):
        z_t, t, x_tilde = self.target(state["teacher"], x, eps, index, cond)
        sched, param = self.schedule, self.parameterization
        out_channels = self.network.out_channels if self.network is not None else None

        def net(x_in, c_noise):
            out = apply(params["network"], x_in, c_noise, cond)
            return out[..., :out_channels] if out_channels else out

        out = param.network_output(net, z_t, t, sched)
        x_hat = param.x0_eps(z_t, out, sched.alpha(t), sched.sigma(t))[0]
        snr = (sched.alpha(t) / sched.sigma(t)) ** 2
        weight = jnp.maximum(snr, 1.0) if self.options.weighting == "truncated_snr" else snr + 1
        return weight * jnp.mean((x_hat - x_tilde) ** 2, axis=tuple(range(1, x.ndim)))

    def loss(self, params, apply, inputs, state, step):
        per_example = self.per_example_loss(params, apply, state, inputs["x"], inputs["cond"],
                                            inputs["eps"], inputs["index"])
        return jnp.mean(per_example), {}

    def validation_losses(self, params, apply, x, cond, rng, num_levels: int, state=None):
        """The loss of held-out x at each student grid time (num_levels is ignored: the grid has
        student_steps times), noise eps_k = normal(fold_in(rng, k)): [K, B]."""

        def level(k):
            eps = jax.random.normal(jax.random.fold_in(rng, k), x.shape, jnp.float32)
            return self.per_example_loss(params, apply, state, x, cond, eps,
                                         jnp.full((x.shape[0],), k, jnp.int32))

        return jax.lax.map(level, jnp.arange(self.options.student_steps))


def check_pd_teacher(teacher: Teacher, options, ctx: ObjectiveContext) -> None:
    """Same schedule, shape and classes; a distilled teacher must have 2 * student_steps."""
    where = f"config.{KEY}.teacher={teacher.workdir!r}"
    if teacher.schedule != ctx.schedule:
        raise ConfigError(f"{where}: the teacher's schedule {teacher.schedule} is not this run's "
                          f"{ctx.schedule}; progressive distillation keeps the schedule")
    if ctx.x_shape and tuple(teacher.x_shape) != tuple(ctx.x_shape):
        raise ConfigError(f"{where}: the teacher makes x of shape {tuple(teacher.x_shape)}, "
                          f"this run's x is {tuple(ctx.x_shape)}")
    classes = ctx.conditioning.num_classes if ctx.conditioning is not None else 0
    if teacher.num_classes != classes:
        raise ConfigError(f"{where}: the teacher is conditioned on {teacher.num_classes} "
                          f"classes, this run on {classes}")
    config = teacher.config
    if config is not None and config.objective.name == "progressive_distillation":
        had = int(config.objective.progressive_distillation.student_steps)
        if had != 2 * options.student_steps:
            raise ConfigError(f"{where} was distilled for {had} steps; a round halves them, "
                              f"so {KEY}.student_steps must be {had // 2}, not "
                              f"{options.student_steps}")
    student, teacher_grid = (time_grid(ctx.schedule, options.student_steps, SPACING),
                             time_grid(ctx.schedule, 2 * options.student_steps, SPACING))
    if not np.allclose(teacher_grid[::2], student, rtol=0, atol=1e-6):
        raise ConfigError(f"config.{KEY}.student_steps={options.student_steps}: the teacher's "
                          f"{2 * options.student_steps}-step grid does not contain the "
                          f"student's on this schedule; use a power of two")


@OBJECTIVES.register("progressive_distillation", options=ProgressiveDistillationOptions)
def progressive_distillation(options: ProgressiveDistillationOptions,
                             ctx: ObjectiveContext) -> ProgressiveDistillation:
    if not options.teacher:
        raise ConfigError(f"config.{KEY}.teacher='' is invalid: name the workdir of a trained "
                          f"run of this codebase (round 1: the diffusion model; later rounds: "
                          f"the previous round)")
    if ctx.load_run is None:
        raise ConfigError(f"config.{KEY}: this builder cannot load a teacher run")
    teacher = ctx.load_run(options.teacher, f"{KEY}.teacher")
    check_pd_teacher(teacher, options, ctx)
    return ProgressiveDistillation(ctx.schedule, ctx.parameterization, ctx.network, options,
                                   teacher)
