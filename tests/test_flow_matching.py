"""Flow matching: interpolants, the velocity parameterization, flow-matching times and every
sampler on Gaussian data N(MU, S^2), whose exact velocity field is known in closed form:
E[x0 | x_t] = MU + alpha S^2 / (alpha^2 S^2 + sigma^2) (x_t - alpha MU) and
v = alpha' E[x0 | x_t] + sigma' E[eps | x_t]."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffjax import samplers as sampling
from diffjax.core import schedules, time_sampling
from diffjax.core.parameterizations import make_parameterization
from diffjax.errors import ConfigError
from diffjax.objectives import ObjectiveContext, make_objective
from diffjax.objectives.flow_matching import FlowMatchingOptions

MU, S = 0.3, 0.5
LINEAR = schedules.make_schedule("flow_linear")
GVP = schedules.make_schedule("flow_gvp")
INTERPOLANTS = {"flow_linear": LINEAR, "flow_gvp": GVP}


def exact_velocity(x_t, t):
    """The linear interpolant's exact velocity for Gaussian data, written out by hand:
    x_t ~ N((1 - t) MU, (1 - t)^2 S^2 + t^2), v = d/dt of the affine flow map."""
    mean, var = (1 - t) * MU, (1 - t) ** 2 * S**2 + t**2
    d_mean, d_var = -MU, -2 * (1 - t) * S**2 + 2 * t
    return d_mean + 0.5 * d_var / var * (x_t - mean)


def gaussian_model(schedule, parameterization):
    """The exact denoiser of N(MU, S^2) in `parameterization` (as a network would output)."""
    param = make_parameterization(parameterization, schedule=schedule)

    def denoiser(x_t, t):
        alpha = schedule.alpha(t)[:, None, None, None]
        sigma = schedule.sigma(t)[:, None, None, None]
        x0 = MU + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (x_t - alpha * MU)
        eps = (x_t - alpha * x0) / sigma
        return param.target(x0, eps, alpha[:, 0, 0, 0], sigma[:, 0, 0, 0])

    return denoiser


def exact_map(schedule, x_start, t_start):
    """The ODE's flow map for Gaussian data from x at t_start to t = 0 (affine, preserving the
    standardised coordinate)."""
    alpha, sigma = float(schedule.alpha(t_start)), float(schedule.sigma(t_start))
    return MU + S * (x_start - alpha * MU) / np.sqrt(alpha**2 * S**2 + sigma**2)


def _sample(schedule, sampler, shape, param="velocity", seed=1, **kw):
    noise = jax.random.normal(jax.random.PRNGKey(seed), shape)
    run = jax.jit(lambda n, k: sampling.sample(gaussian_model(schedule, param), schedule, param,
                                               n, k, sampler=sampler, **kw))
    x, nfe = run(noise, jax.random.PRNGKey(2))
    x0_start = sampling.prediction.initial_x(schedule, noise, sampling.time_grid(
        schedule, kw.get("num_steps", 50), kw.get("spacing", "uniform"))[0])
    return np.asarray(x), int(nfe), np.asarray(x0_start)


# -- interpolants and the velocity parameterization ------------------------------------------


def test_interpolants_are_the_linear_and_gvp_paths():
    t = jnp.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(LINEAR.alpha(t), 1 - t, atol=1e-7)
    np.testing.assert_allclose(LINEAR.sigma(t), t, atol=1e-7)
    np.testing.assert_allclose(GVP.alpha(t), np.cos(np.pi * t / 2), atol=1e-6)
    np.testing.assert_allclose(GVP.sigma(t), np.sin(np.pi * t / 2), atol=1e-6)
    inner = jnp.linspace(0.05, 0.95, 10)
    for schedule in (LINEAR, GVP):
        np.testing.assert_allclose(schedule.t_from_logsnr(schedule.logsnr(inner)), inner,
                                   atol=1e-5)


@pytest.mark.parametrize("name", ["flow_linear", "flow_gvp", "vp_linear", "vp_cosine", "edm"])
def test_rates_are_the_time_derivatives(name):
    """schedule.rates(alpha, sigma) against central finite differences of alpha(t), sigma(t)."""
    schedule = schedules.make_schedule(name)
    t = np.linspace(0.1, 0.9, 9)
    h = 1e-3
    a, b = schedule.rates(schedule.alpha(t), schedule.sigma(t))
    fd = lambda f: (np.asarray(f(t + h), np.float64) - np.asarray(f(t - h))) / (2 * h)  # noqa
    np.testing.assert_allclose(a, fd(schedule.alpha), rtol=2e-2, atol=2e-3)
    np.testing.assert_allclose(b, fd(schedule.sigma), rtol=2e-2, atol=2e-3)


def test_velocity_on_the_linear_path_is_eps_minus_x0():
    rng = np.random.default_rng(0)
    x0, eps = (jnp.asarray(rng.standard_normal((5, 2, 2, 1)), jnp.float32) for _ in range(2))
    t = jnp.asarray([0.1, 0.3, 0.5, 0.7, 0.9], jnp.float32)
    tb = t[:, None, None, None]
    x_t = (1 - tb) * x0 + tb * eps
    param = make_parameterization("velocity", schedule=LINEAR)
    v = param.target(x0, eps, LINEAR.alpha(t), LINEAR.sigma(t))
    np.testing.assert_allclose(v, eps - x0, atol=1e-6)
    x0_hat, eps_hat = param.x0_eps(x_t, eps - x0, LINEAR.alpha(t), LINEAR.sigma(t))
    np.testing.assert_allclose(x0_hat, x_t - tb * (eps - x0), atol=1e-6)   # x0 = x_t - t v
    np.testing.assert_allclose(eps_hat, x_t + (1 - tb) * (eps - x0), atol=1e-6)
    np.testing.assert_allclose(x0_hat, x0, atol=1e-5)
    np.testing.assert_allclose(param.error_scale(LINEAR.alpha(t), LINEAR.sigma(t)),
                               1 / (1 - t) ** 2, rtol=1e-5)


def test_gvp_velocity_is_half_pi_times_the_diffusion_v():
    """On alpha = cos, sigma = sin: dx/dt = pi/2 (alpha eps - sigma x0) = pi/2 v (Salimans & Ho)."""
    rng = np.random.default_rng(1)
    x0, eps = (jnp.asarray(rng.standard_normal((4, 2, 2, 1)), jnp.float32) for _ in range(2))
    t = jnp.asarray([0.2, 0.4, 0.6, 0.8], jnp.float32)
    alpha, sigma = GVP.alpha(t), GVP.sigma(t)
    velocity = make_parameterization("velocity", schedule=GVP).target(x0, eps, alpha, sigma)
    v = make_parameterization("v").target(x0, eps, alpha, sigma)
    np.testing.assert_allclose(velocity, 0.5 * np.pi * np.asarray(v), atol=1e-5)


def test_velocity_target_of_the_exact_model_is_the_closed_form_field():
    t = jnp.asarray([0.1, 0.5, 0.9], jnp.float32)
    x_t = jnp.asarray(np.random.default_rng(2).standard_normal((3, 1, 1, 1)), jnp.float32)
    v = gaussian_model(LINEAR, "velocity")(x_t, t)
    np.testing.assert_allclose(v, exact_velocity(x_t, t[:, None, None, None]), rtol=1e-4,
                               atol=1e-5)


# -- flow-matching times ---------------------------------------------------------------------


def test_logit_normal_times_follow_their_cdf():
    """SD3 eq. 19: P(t <= x) = Phi((logit x - m) / s)."""
    t = np.asarray(time_sampling.flow_time(jax.random.PRNGKey(0), 20000, "logit_normal",
                                           0.5, 0.8))
    cdf = lambda x: stats.norm.cdf((np.log(x) - np.log1p(-x) - 0.5) / 0.8)  # noqa: E731
    assert stats.kstest(t, cdf).pvalue > 1e-3
    assert stats.kstest(t, stats.uniform.cdf).pvalue < 1e-6  # the test can tell them apart


def test_shifted_uniform_times_follow_sd3_eq23():
    """t' = s t / (1 + (s - 1) t) with t ~ U[0, 1]: P(t' <= y) = y / (s - (s - 1) y)."""
    shift = 3.0
    assert float(time_sampling.shift_time(0.5, shift)) == pytest.approx(0.75)
    t = np.asarray(time_sampling.flow_time(jax.random.PRNGKey(1), 20000, "uniform",
                                           shift=shift))
    assert stats.kstest(t, lambda y: y / (shift - (shift - 1) * y)).pvalue > 1e-3
    assert stats.kstest(t, stats.uniform.cdf).pvalue < 1e-6
    # SD3's resolution-dependent shift: sqrt(m / n) for m = 4 n pixels is 2.
    assert time_sampling.resolution_shift(1.0, 32, 64, 64) == pytest.approx(2.0)


def test_flow_matching_loss_is_the_velocity_mse():
    """With a network that outputs 0, the loss is E ||eps - x0||^2 over the drawn batch."""
    ctx = ObjectiveContext(LINEAR, make_parameterization("velocity", schedule=LINEAR))
    objective = make_objective("flow_matching", FlowMatchingOptions(), ctx)
    x0 = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (16, 4, 4, 1)), jnp.float32)
    inputs = objective.prepare(x0, {}, jax.random.PRNGKey(4), 0)
    loss, _ = objective.loss({"network": None}, lambda p, x, c, cond: jnp.zeros_like(x),
                             inputs, {}, 0)
    np.testing.assert_allclose(loss, np.mean((np.asarray(inputs["eps"]) - x0) ** 2), rtol=1e-5)
    assert 0 < float(inputs["t"].min()) and float(inputs["t"].max()) < 1


def test_flow_matching_on_a_diffusion_schedule_is_refused():
    ctx = ObjectiveContext(schedules.make_schedule("vp_cosine"), make_parameterization("eps"))
    with pytest.raises(ConfigError, match="diffusion.schedule must be flow_linear or flow_gvp"):
        make_objective("flow_matching", None, ctx)


# -- samplers on Gaussian data ---------------------------------------------------------------

STOCHASTIC = ("ddpm", "pc", "flow_sde")
DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "ode", "flow_euler",
                 "flow_heun")


@pytest.mark.parametrize("interpolant", list(INTERPOLANTS))
@pytest.mark.parametrize("sampler", STOCHASTIC + DETERMINISTIC)
def test_every_sampler_reproduces_the_data_distribution(sampler, interpolant):
    schedule = INTERPOLANTS[interpolant]
    x, _, _ = _sample(schedule, sampler, (4000, 2, 2, 1), num_steps=100)
    assert abs(x.mean() - MU) < 0.02, x.mean()
    assert abs(x.std() - S) < 0.02, x.std()


@pytest.mark.parametrize("sampler,order,spacing", [
    ("flow_euler", 1, "uniform"), ("flow_heun", 2, "uniform"),
    ("euler", 1, "karras"), ("heun", 2, "karras")])  # EDM's steps on their own grid
def test_deterministic_samplers_converge_at_their_order(sampler, order, spacing):
    """Error against the exact ODE map from the same start, at K = 16, 32, 64 steps."""
    errors = []
    steps = (16, 32, 64)
    for num_steps in steps:
        x, _, x_start = _sample(LINEAR, sampler, (64, 2, 2, 1), num_steps=num_steps,
                                spacing=spacing)
        errors.append(np.abs(x - exact_map(LINEAR, x_start, LINEAR.t_max)).max())
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert -order - 0.4 < slope < -order + 0.4, (errors, slope)


@pytest.mark.parametrize("sampler,last_step,nfe", [
    ("flow_euler", None, 10), ("flow_heun", None, 19), ("flow_sde", "mean", 10),
    ("flow_sde", "euler", 10), ("flow_sde", "denoise", 10)])
def test_flow_samplers_nfe_and_last_steps(sampler, last_step, nfe):
    """NFE for K = 10 grid times; every last step of the SDE lands on the data distribution."""
    kw = {"last_step": last_step} if last_step else {}
    x, used, _ = _sample(LINEAR, sampler, (4000, 2, 2, 1), num_steps=10 if not last_step
                         else 100, **kw)
    assert used == (nfe if not last_step else 100)
    if last_step:
        assert abs(x.mean() - MU) < 0.02 and abs(x.std() - S) < 0.03, (x.mean(), x.std())


def test_flow_sde_diffusion_forms_follow_sit():
    """SiT's compute_diffusion in t = 1 - t_SiT: sigma -> t, linear -> t, sbdm -> t / (1 - t) on
    the linear path (sigma sigma' - sigma^2 alpha' / alpha)."""
    from diffjax.samplers.flow import diffusion_coefficient

    t = 0.25
    assert float(diffusion_coefficient(LINEAR, t, "sigma", 2.0)) == pytest.approx(0.5)
    assert float(diffusion_coefficient(LINEAR, t, "linear", 3.0)) == pytest.approx(0.75)
    assert float(diffusion_coefficient(LINEAR, t, "constant", 0.7)) == pytest.approx(0.7)
    assert float(diffusion_coefficient(GVP, t, "sigma")) == pytest.approx(math.sin(math.pi / 8))
    assert float(diffusion_coefficient(LINEAR, t, "sbdm")) == pytest.approx(t / (1 - t))
    assert float(diffusion_coefficient(LINEAR, t, "decreasing")) == pytest.approx(
        0.25 * (math.cos(math.pi * (1 - t)) + 1) ** 2)
    assert float(diffusion_coefficient(LINEAR, t, "increasing_decreasing")) == pytest.approx(
        math.sin(math.pi * (1 - t)) ** 2)


# -- end to end ------------------------------------------------------------------------------

FLOW = ["--config.objective.name=flow_matching", "--config.diffusion.schedule=flow_linear",
        "--config.diffusion.parameterization=velocity", "--config.sampling.sampler=flow_heun",
        "--config.objective.flow_matching.time_sampling=logit_normal"]
TINY_DIT = ["--config.model.name=dit", "--config.model.dit.depth=2",
            "--config.model.dit.hidden_size=32", "--config.model.dit.num_heads=4",
            "--config.model.dit.patch_size=4", "--config.conditioning.name=class_label",
            "--config.conditioning.class_label.dropout=0.1",
            "--config.sampling.guidance_scale=2.0"]


def test_flow_matching_unet_trains_on_the_velocity_mse(data_dir):
    """Two steps in-process: the loss is the velocity MSE, near E||eps - x0||^2 = 1 + E[x0^2]
    (about 1.8 on digits, mostly -1 background), not an eps-MSE near 1."""
    from conftest import run_steps, tiny_config

    config = tiny_config(data_dir, **{
        "objective.name": "flow_matching", "diffusion.schedule": "flow_linear",
        "diffusion.parameterization": "velocity", "sampling.sampler": "flow_heun"})
    _, _, losses = run_steps(config, 2)
    assert all(1.3 < loss < 2.5 for loss in losses), losses


def test_flow_matching_dit_trains_and_samples_through_launch(data_dir, tmp_path):
    """launch.py trains 2 flow-matching steps of a class-conditional DiT with the FID during
    training, then samples with guidance."""
    import json
    import os

    from test_launch import TINY, launch

    workdir = str(tmp_path / "dit")
    extra = TINY_DIT + ["--config.eval.every_steps=2", "--config.eval.train_num_samples=4",
                        "--config.eval.reference_num_images=8", "--config.eval.batch_size=8",
                        f"--config.eval.reference_dir={tmp_path / 'fid'}"]
    train = launch("--workdir", workdir, "--config.training.num_steps=2", *TINY, *FLOW, *extra,
                   data_dir=data_dir)
    assert train.returncode == 0, train.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert len(losses) == 2 and all(1.3 < loss < 2.5 for loss in losses), losses
    assert "step 2: FID@4 = " in train.stdout
    sample = launch("--workdir", workdir, "--mode=sample", data_dir=data_dir)
    assert sample.returncode == 0, sample.stderr[-3000:]
    npz = os.path.join(workdir, "samples", "samples_step2_flow_heun3_cfg2_seed0.npz")
    assert np.load(npz)["images"].shape == (6, 16, 16, 1)
