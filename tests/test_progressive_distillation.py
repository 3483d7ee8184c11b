"""Progressive distillation: the target against two DDIM steps of an exact Gaussian teacher,
the grids, the start from the teacher and the clear errors."""

import jax
import numpy as np
import pytest
from conftest import tiny_config, train_run
from test_consistency import _ExactEpsNetwork

from diffjax.core import schedules
from diffjax.core.parameterizations import make_parameterization
from diffjax.errors import ConfigError
from diffjax.objectives import Teacher
from diffjax.objectives.progressive_distillation import (
    ProgressiveDistillation,
    ProgressiveDistillationOptions,
)
from diffjax.samplers.grids import default_t_min


def _numpy_ddim(z, x0, a_t, s_t, a_s, s_s):
    return a_s * x0 + s_s * (z - a_t * x0) / s_t


def test_one_student_ddim_step_to_the_target_lands_where_two_teacher_steps_do():
    """N(0, c^2) data, the exact denoiser x0(z, t) = z a c^2 / (a^2 c^2 + s^2) as an eps teacher
    on vp_linear; 4 student steps on the trailing grid t_i = 1 - i h, h = (1 - t_min) / 4,
    teacher times t' = t - h/2 and t'' = t - h (clean data after the last). A float64 numpy
    DDIM step from z_t with x~ equals two float64 teacher DDIM steps, and x~ is PD's closed
    form (float32 cancellation at t = 1, where alpha = 0.006: atol 1e-4 on values ~0.5)."""
    c, vp = 0.5, schedules.make_schedule("vp_linear")
    teacher = Teacher(_ExactEpsNetwork(vp, c), vp, make_parameterization("eps"), {}, (4, 4, 1),
                      0, None, 0, "stub")
    obj = ProgressiveDistillation(vp, make_parameterization("v"), None,
                                  ProgressiveDistillationOptions(teacher="stub"), teacher)
    index = np.array([0, 1, 2, 3] * 4)
    x = c * np.asarray(jax.random.normal(jax.random.PRNGKey(0), (16, 4, 4, 1)))
    eps = np.asarray(jax.random.normal(jax.random.PRNGKey(1), x.shape))
    z_t, t, x_tilde = obj.target({}, x, eps, index, {})
    h = (1.0 - default_t_min(vp)) / 4
    np.testing.assert_allclose(np.asarray(t), 1.0 - h * index, atol=1e-6)

    alpha = lambda t: float(vp.alpha(t))  # noqa: E731
    sigma = lambda t: float(vp.sigma(t))  # noqa: E731
    exact_x0 = lambda z, t: z * alpha(t) * c**2 / (alpha(t) ** 2 * c**2 + sigma(t) ** 2)  # noqa
    for row, i in enumerate(index):
        t0, t1, t2 = 1.0 - h * i, 1.0 - h * (i + 0.5), 1.0 - h * (i + 1)
        a2, s2 = (1.0, 0.0) if i == 3 else (alpha(t2), sigma(t2))
        z = alpha(t0) * x[row] + sigma(t0) * eps[row]
        z1 = _numpy_ddim(z, exact_x0(z, t0), alpha(t0), sigma(t0), alpha(t1), sigma(t1))
        z2 = _numpy_ddim(z1, exact_x0(z1, t1), alpha(t1), sigma(t1), a2, s2)
        np.testing.assert_allclose(np.asarray(z_t[row]), z, rtol=1e-5, atol=1e-6)
        one = _numpy_ddim(z, np.asarray(x_tilde[row], np.float64), alpha(t0), sigma(t0), a2, s2)
        np.testing.assert_allclose(one, z2, rtol=1e-4, atol=1e-4)
        ratio = s2 / sigma(t0)
        np.testing.assert_allclose(np.asarray(x_tilde[row]),
                                   (z2 - ratio * z) / (a2 - ratio * alpha(t0)),
                                   rtol=1e-4, atol=1e-4)


def test_distillation_rounds_start_from_the_teacher_and_refuse_bad_steps(
        data_dir, tmp_path):
    from diffjax.experiment import Experiment

    teacher_dir = str(tmp_path / "teacher")
    teacher_state = train_run(tiny_config(data_dir, **{"training.num_steps": 2}), teacher_dir)

    def pd_config(teacher=teacher_dir, **overrides):
        return tiny_config(data_dir, **{
            "objective.name": "progressive_distillation",
            "objective.progressive_distillation.teacher": teacher,
            "objective.progressive_distillation.student_steps": 2,
            "sampling.sampler": "ddim", "sampling.spacing": "trailing",
            "sampling.num_steps": 2, **overrides})

    exp = Experiment(pd_config(), load_data=False)
    start = exp.init_state()
    teacher_ema = exp.ema.params(teacher_state.ema, exp.ema.default_key)
    for a, b in zip(jax.tree.leaves(start.params), jax.tree.leaves(teacher_ema)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # exact resume of an objective with state is tested on CD (tests/test_consistency.py)
    train_run(pd_config(**{"training.num_steps": 2}), str(tmp_path / "straight"))

    with pytest.raises(ConfigError, match=r"num_steps=4 with spacing='trailing': this model was "
                                          r"distilled for 2 DDIM steps"):
        Experiment(pd_config(**{"sampling.num_steps": 4}), load_data=False)
    # round 2 must halve round 1's 2 steps
    with pytest.raises(ConfigError, match="was distilled for 2 steps; a round halves them, so "
                                          ".*student_steps must be 1, not 2"):
        Experiment(pd_config(teacher=str(tmp_path / "straight")), load_data=False)
    with pytest.raises(ConfigError, match="the teacher's schedule .* is not this run's"):
        Experiment(pd_config(**{"diffusion.schedule": "cosine"}), load_data=False)
    with pytest.raises(ConfigError, match="init_from_teacher=True: the student's network is "
                                          "not the teacher's"):
        Experiment(pd_config(**{"model.unet.ch": 64}), load_data=False).init_state()
