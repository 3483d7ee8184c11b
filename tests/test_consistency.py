"""Consistency models: the boundary condition, iCT's loss pieces against the paper's formulas,
learning the exact consistency function of Gaussian data, the multistep sampler, exact resume
and the clear errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config, train_run
from scipy import stats

from diffjax.core import consistency as cm
from diffjax.core import schedules
from diffjax.core.parameterizations import make_parameterization
from diffjax.errors import ConfigError
from diffjax.objectives import ObjectiveContext, make_objective
from diffjax.objectives.consistency import ConsistencyTrainingOptions
from diffjax.samplers import sample

EDM = schedules.make_schedule("edm")
CM = make_parameterization("consistency", 0.5, EDM)


def ict_config(data_dir, **overrides):
    return tiny_config(data_dir, **{"diffusion.schedule": "edm",
                                    "diffusion.parameterization": "consistency",
                                    "objective.name": "consistency_training",
                                    "sampling.sampler": "consistency", **overrides})


def test_a_consistency_model_is_exactly_the_identity_at_sigma_min():
    """f(x, s_min) = x bit for bit, whatever the network outputs (here +-1e4)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 2)) * 7.0
    out = 1e4 * jax.random.normal(jax.random.PRNGKey(1), x.shape)
    t0 = jnp.zeros((3,))
    x0, _ = CM.x0_eps(x, out, EDM.alpha(t0), EDM.sigma(t0))
    np.testing.assert_array_equal(np.asarray(x0), np.asarray(x))
    vp = schedules.make_schedule("vp_cosine")
    cm_vp = make_parameterization("consistency", 0.5, vp)
    x0_vp, _ = cm_vp.x0_eps(x, out, vp.alpha(t0), vp.sigma(t0))
    np.testing.assert_allclose(np.asarray(x0_vp), np.asarray(x / vp.alpha(0.0)), rtol=1e-6)
    # and it is not the identity one level up
    t1 = jnp.full((3,), 1e-3)
    assert not np.allclose(CM.x0_eps(x, out, EDM.alpha(t1), EDM.sigma(t1))[0], x, atol=1e-2)


def test_boundary_coefficients_are_song_et_al_appendix_c():
    """c_skip = sd^2 / ((s - s_min)^2 + sd^2), c_out = sd (s - s_min) / sqrt(sd^2 + s^2), from
    the paper, at s = 0.002 (1, 0), 0.5 and 80."""
    s = np.array([0.002, 0.5, 80.0])
    c_skip, c_out = cm.skip_out(s, 0.002, 0.5)
    np.testing.assert_allclose(c_skip, [1.0, 0.25 / (0.498**2 + 0.25), 0.25 / (79.998**2 + 0.25)],
                               rtol=1e-6)
    np.testing.assert_allclose(c_out, [0.0, 0.5 * 0.498 / math.sqrt(0.5), 0.5 * 79.998
                                       / math.sqrt(0.25 + 6400.0)], rtol=1e-6, atol=1e-9)


def test_pseudo_huber_is_its_formula_and_its_two_limits():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 5, 3, 3, 1)), rng.normal(size=(2, 5, 3, 3, 1))
    c = 0.03
    expected = np.sqrt(((x - y) ** 2).reshape(2, -1).sum(1) + c**2) - c
    np.testing.assert_allclose(cm.pseudo_huber(x, y, c), expected, rtol=1e-6)
    small = np.full((1, 4), 1e-4)  # ||d||^2 / (2 c) when ||d|| << c
    np.testing.assert_allclose(cm.pseudo_huber(small, 0 * small, c), 4e-8 / (2 * c), rtol=1e-3)
    big = np.full((1, 4), 50.0)  # ||d|| - c when ||d|| >> c
    np.testing.assert_allclose(cm.pseudo_huber(big, 0 * big, c), 100.0 - c, rtol=1e-6)
    assert abs(cm.pseudo_huber_c(32 * 32 * 3) - 0.03) < 1e-3  # iCT: c = 0.03 on CIFAR-10


def test_ict_curriculum_doubles_from_10_to_1280_in_eight_stages():
    """iCT eq. 8 with K = 800: K' = floor(800 / (log2 128 + 1)) = 100, so N = 11, 21, 41, ...,
    1281 on steps [0, 100), [100, 200), ..., and 1281 from step 700 on."""
    steps = np.array([0, 99, 100, 250, 399, 400, 650, 700, 799, 5000])
    got = [int(cm.num_scales(k, 800)) for k in steps]
    assert got == [11, 11, 21, 41, 81, 161, 641, 1281, 1281, 1281]


def test_lognormal_pair_probabilities_are_differences_of_the_normal_cdf_of_log_sigma():
    """p(i) ~ Phi((ln s_{i+1} - m) / sd) - Phi((ln s_i - m) / sd) (iCT eq. 10), scipy's Phi,
    on the 11-point EDM grid padded to 21 levels (the padding gets probability 0)."""
    n, m, sd = 11, -1.1, 2.0
    sigmas = np.asarray(cm.karras_levels(n, 21, 0.002, 80.0))
    ramp = np.linspace(0, 1, n)
    grid = (0.002 ** (1 / 7) + ramp * (80.0 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    np.testing.assert_allclose(sigmas[:n], grid, rtol=1e-5)
    cdf = stats.norm.cdf((np.log(grid) - m) / sd)
    expected = np.diff(cdf) / np.diff(cdf).sum()
    probs = np.asarray(jax.nn.softmax(cm.lognormal_pair_logits(jnp.asarray(sigmas), n, m, sd)))
    np.testing.assert_allclose(probs[: n - 1], expected, rtol=1e-4)
    assert probs[n - 1:].sum() == 0.0


class _Recorder:
    """A denoiser whose consistency function is 0 everywhere (F = -c_skip x / c_out), recording
    the (t, x_t) it is called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t):
        jax.debug.callback(lambda t, x: self.calls.append((np.asarray(t), np.asarray(x))), t, x)
        alpha, sigma = EDM.alpha(t), EDM.sigma(t)
        c_skip, c_out = CM.c_skip_out(alpha, sigma)
        return -c_skip[:, None, None, None] * x / c_out[:, None, None, None]


@pytest.mark.parametrize("num_steps,levels", [(1, [80.0]), (2, [80.0, 0.821]),
                                              (4, [80.0, 17.53, 2.515, 0.1698])])
def test_multistep_sampling_evaluates_at_the_papers_levels_and_adds_fresh_noise(num_steps, levels):
    """Algorithm 1: f at s_max, then x = x0 + sqrt(s_k^2 - s_min^2) z at each intermediate level:
    with f = 0, the k-th input has std sqrt(s_k^2 - s_min^2) and independent noise."""
    rec = _Recorder()
    noise = jax.random.normal(jax.random.PRNGKey(0), (256, 8, 8, 1))
    x0, nfe = sample(rec, EDM, CM, noise, jax.random.PRNGKey(1), sampler="consistency",
                     num_steps=num_steps)
    jax.block_until_ready(x0)
    assert nfe == num_steps and len(rec.calls) == num_steps
    np.testing.assert_allclose(np.asarray(x0), 0.0, atol=1e-4)
    for (t, x_t), s in zip(rec.calls, levels):
        np.testing.assert_allclose(float(EDM.sigma(t[0])), s, rtol=2e-3)
        np.testing.assert_allclose(x_t.std(), math.sqrt(s**2 - 0.002**2) if s < 80 else 80.0,
                                   rtol=0.03)
    if num_steps > 2:
        a, b = rec.calls[1][1].ravel(), rec.calls[2][1].ravel()
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.05


def test_consistency_training_learns_the_pf_ode_map_of_gaussian_data():
    """x0 ~ N(0, c^2 I): the PF-ODE carries x_s to x_{s_min} = x_s sqrt(c^2 + s_min^2) /
    sqrt(c^2 + s^2), the exact consistency function. A model F = g(c_noise) c_in x with g a small
    MLP, trained by consistency_training (iCT's loss, curriculum and level distribution) for 300
    Adam steps, more than halves its mean squared distance to that map over the levels."""
    c, dim = 0.5, (4, 4, 1)
    ctx = ObjectiveContext(EDM, CM, num_steps=300)
    obj = make_objective("consistency_training", ConsistencyTrainingOptions(), ctx)
    layers = [(1, 32), (32, 32), (32, 1)]
    keys = jax.random.split(jax.random.PRNGKey(0), len(layers))
    params = [{"w": jax.random.normal(k, s) / math.sqrt(s[0]), "b": jnp.zeros(s[1])}
              for k, s in zip(keys, layers)]
    params[-1] = jax.tree.map(jnp.zeros_like, params[-1])

    def apply(p, x_in, c_noise, cond):
        h = (c_noise / 1000.0)[:, None]
        for layer in p[:-1]:
            h = jax.nn.silu(h @ layer["w"] + layer["b"])
        g = (h @ p[-1]["w"] + p[-1]["b"])[:, 0]
        return g[:, None, None, None] * x_in

    ts = jnp.linspace(0.05, 1.0, 24)
    x_eval = c * jax.random.normal(jax.random.PRNGKey(9), (24, 512, *dim))
    z_eval = jax.random.normal(jax.random.PRNGKey(8), x_eval.shape)

    def distance(p):
        def one(t, x, z):
            tb = jnp.full((x.shape[0],), t)
            s = EDM.sigma(t)
            x_t = x + s * z
            f = obj.consistency_fn(p, apply, {}, x_t, tb)
            exact = x_t * math.sqrt(c**2 + 0.002**2) / jnp.sqrt(c**2 + s**2)
            return jnp.mean((f - exact) ** 2)

        return jnp.mean(jax.vmap(one)(ts, x_eval, z_eval))

    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, k):
        rng = jax.random.fold_in(jax.random.PRNGKey(1), k)
        x = c * jax.random.normal(jax.random.fold_in(rng, 0), (128, *dim))
        inputs = obj.prepare(x, {}, jax.random.fold_in(rng, 1), k)
        grads = jax.grad(lambda p: obj.loss({"network": p}, apply, inputs, {}, k)[0])(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    before = float(distance(params))
    for k in range(300):
        params, opt = step(params, opt, k)
    after = float(distance(params))
    assert after < 0.5 * before, (before, after)


def test_bad_consistency_settings_fail_clearly(data_dir):
    from diffjax.experiment import Experiment

    with pytest.raises(ConfigError, match="sampler='consistency' samples consistency models.*"
                                          "parameterization is 'eps'"):
        Experiment(tiny_config(data_dir, **{"sampling.sampler": "consistency"}))
    with pytest.raises(ConfigError, match="parameterization must be 'consistency', not 'edm'"):
        Experiment(ict_config(data_dir, **{"diffusion.parameterization": "edm",
                                           "sampling.sampler": "heun"}))
    with pytest.raises(ConfigError, match="needs a continuous schedule"):
        Experiment(ict_config(data_dir, **{"diffusion.schedule": "linear"}))
    with pytest.raises(ConfigError, match=r"sigmas=\(2.0, 1.0\) has 2 levels; config.sampling."
                                          r"num_steps=2 needs 1"):
        Experiment(ict_config(data_dir, **{"sampling.consistency.sigmas": (2.0, 1.0)}))
    with pytest.raises(ConfigError, match="outside the schedule's levels"):
        Experiment(ict_config(data_dir, **{"sampling.consistency.sigmas": (100.0,)}))


def _gaussian_pf_ode(x, s_from, s_to, c):
    return x * np.sqrt(c**2 + s_to**2) / np.sqrt(c**2 + s_from**2)


def test_teacher_ode_steps_have_heun_and_euler_local_orders_on_the_exact_gaussian_pf_ode():
    """D(x; s) = x c^2 / (c^2 + s^2) is the exact denoiser of N(0, c^2) data, whose PF-ODE maps
    x at s to x sqrt(c^2 + s'^2) / sqrt(c^2 + s^2). One step from s = 1 to 1 - h has local error
    O(h^3) for Heun and O(h^2) for Euler: halving h divides them by ~8 and ~4."""
    c = 0.5
    denoise = lambda v, s: v * c**2 / (c**2 + s[:, None, None, None] ** 2)  # noqa: E731

    def err(solver, h):
        x = jnp.ones((1, 1, 1, 1), jnp.float32)
        got = float(cm.ode_step_ve(denoise, x, jnp.asarray([1.0]), jnp.asarray([1.0 - h]),
                                   solver).ravel()[0])
        return abs(got - _gaussian_pf_ode(1.0, 1.0, 1.0 - h, c))

    heun = err("heun", 0.2) / err("heun", 0.1)
    euler = err("euler", 0.2) / err("euler", 0.1)
    assert 6.5 < heun < 9.5 and 3.3 < euler < 4.7, (heun, euler)
    assert err("heun", 0.1) < 0.1 * err("euler", 0.1)


class _ExactEpsNetwork:
    """The exact eps of N(0, c^2) data on a continuous VP schedule: predict() reads t from
    c_noise = 1000 t."""

    out_channels = 1

    def __init__(self, schedule, c):
        self.schedule, self.c = schedule, c

    def predict(self, params, x_t, c_noise, cond, train=False):
        t = c_noise / 1000.0
        a, s = self.schedule.alpha(t)[:, None, None, None], self.schedule.sigma(t)[:, None,
                                                                                  None, None]
        x0 = x_t * a * self.c**2 / (a**2 * self.c**2 + s**2)
        return (x_t - a * x0) / s


def test_the_distillation_target_is_a_teacher_heun_step_on_another_schedule():
    """A VP (vp_linear, eps) teacher with the exact eps of Gaussian data, an EDM student:
    x_hat_n from teacher_target_input is a float64 Heun step of the exact VE-form PF-ODE from
    s_{n+1} to s_n (the student's schedule is VE, so x_t = x_ve)."""
    from diffjax.objectives import Teacher
    from diffjax.objectives.consistency_distillation import (
        ConsistencyDistillation,
        ConsistencyDistillationOptions,
    )

    c, vp = 0.5, schedules.make_schedule("vp_linear")
    student_sched = schedules.make_schedule("edm", schedules.EDMSchedule(sigma_min=0.01))
    teacher = Teacher(_ExactEpsNetwork(vp, c), vp, make_parameterization("eps"), {}, (4, 4, 1),
                      0, None, 0, "stub")
    obj = ConsistencyDistillation(student_sched,
                                  make_parameterization("consistency", 0.5, student_sched),
                                  None, ConsistencyDistillationOptions(teacher="stub"), teacher)
    inputs = obj.prepare(c * jax.random.normal(jax.random.PRNGKey(0), (64, 4, 4, 1)), {},
                         jax.random.PRNGKey(1), 0)
    x_hat = obj.teacher_target_input({}, inputs["x"], {}, inputs["z"], inputs["t_cur"],
                                     inputs["t_next"])
    s_cur = np.asarray(obj.level(inputs["t_cur"]))[:, None, None, None]
    s_next = np.asarray(obj.level(inputs["t_next"]))[:, None, None, None]
    x_next = np.asarray(inputs["x"]) + s_next * np.asarray(inputs["z"])
    d = lambda v, s: (v - v * c**2 / (c**2 + s**2)) / s  # noqa: E731  (exact, VE, float64)
    euler = x_next + (s_cur - s_next) * d(x_next, s_next)
    heun = x_next + (s_cur - s_next) * 0.5 * (d(x_next, s_next) + d(euler, s_cur))
    assert len(np.unique(s_cur)) > 5
    np.testing.assert_allclose(np.asarray(x_hat), heun, rtol=2e-4, atol=2e-5)


def test_distillation_resumes_bit_exactly_and_refuses_a_bad_teacher(data_dir, tmp_path):
    """4 steps straight == 2, restart, 2 more, with the teacher and CM's EMA target network as
    objective state (the one resume test of the consistency objectives: iCT's target_ema state
    is the same objective-state path)."""
    from diffjax.experiment import Experiment

    teacher_dir = str(tmp_path / "teacher")
    train_run(tiny_config(data_dir, **{"training.num_steps": 2}), teacher_dir)

    def cd_config(**overrides):
        return ict_config(data_dir, **{
            "objective.name": "consistency_distillation",
            "diffusion.edm.sigma_min": 0.01,
            "objective.consistency_distillation.teacher": teacher_dir, **overrides})

    config = cd_config()
    straight = train_run(config, str(tmp_path / "straight"))
    config.training.num_steps = 2
    train_run(config, str(tmp_path / "resumed"))
    config.training.num_steps = 4
    resumed = train_run(config, str(tmp_path / "resumed"))
    assert set(resumed.objective.state) == {"teacher", "target"}
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    with pytest.raises(ConfigError, match="teacher='/nowhere/run' is invalid: /nowhere/run/"
                                          "config.json does not exist"):
        Experiment(cd_config(**{"objective.consistency_distillation.teacher": "/nowhere/run"}))
    with pytest.raises(ConfigError, match=r"the teacher makes x of shape \(16, 16, 1\), this "
                                          r"run's x is \(8, 8, 1\)"):
        Experiment(cd_config(**{"data.image_size": 8, "model.unet.attn_resolutions": (4,)}))
    with pytest.raises(ConfigError, match=r"student's noise levels \[0.002, 80\] .* leave the "
                                          r"teacher's \[0.01"):
        Experiment(cd_config(**{"diffusion.edm.sigma_min": 0.002}))
