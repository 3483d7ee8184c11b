"""Samplers against Gaussian data N(mu, s^2 I), whose exact denoiser is known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import losses, sampling, schedules

MU, S = 0.3, 0.5
SHAPE = (4000, 2, 2, 1)  # 16,000 iid scalars: the sample mean has sd S / 126 = 0.004


def gaussian_denoiser(schedule, parameterization="eps"):
    """Exact E[x0 | x_t] for x0 ~ N(MU, S^2): MU + alpha S^2 / (alpha^2 S^2 + sigma^2) (x_t - alpha MU),
    returned in the requested parameterization."""

    def denoiser(x_t, t):
        alpha = schedule.alpha(t)[:, None, None, None]
        sigma = schedule.sigma(t)[:, None, None, None]
        x0 = MU + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (x_t - alpha * MU)
        eps = (x_t - alpha * x0) / sigma
        return losses.target(parameterization, x0, eps, alpha[:, 0, 0, 0], sigma[:, 0, 0, 0])

    return denoiser


def _sample(schedule, param="eps", **kw):
    noise = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
    run = jax.jit(lambda n, k: sampling.sample(gaussian_denoiser(schedule, param), schedule, param, n,
                                               k, clip_denoised=False, **kw)[0])
    return np.asarray(run(noise, jax.random.PRNGKey(2)))


LINEAR = schedules.DiscreteSchedule(tuple(schedules.linear_betas(1000)))


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_1000_steps_reproduces_the_data_distribution(variance):
    x = _sample(LINEAR, sampler="ddpm", num_steps=1000, ddpm_variance=variance)
    # 5 standard errors: mean sd 0.004, variance sd S^2 sqrt(2/n) = 0.0028.
    assert x.mean() == pytest.approx(MU, abs=0.02)
    assert x.var() == pytest.approx(S**2, abs=0.015 if variance == "small" else 0.02)


def exact_ode_solution(schedule, noise, t_start):
    """The probability-flow ODE maps x_T to x0 = MU + S (x_T - alpha MU) / sqrt(alpha^2 S^2 + sigma^2)
    for Gaussian data (the map is affine and preserves standardised coordinates)."""
    alpha, sigma = float(schedule.alpha(t_start)), float(schedule.sigma(t_start))
    return MU + S * (noise - alpha * MU) / np.sqrt(alpha**2 * S**2 + sigma**2)


@pytest.mark.parametrize("param", losses.PARAMETERIZATIONS)
def test_ddim_deterministic_converges_to_the_exact_ode_solution(param):
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(1), SHAPE))
    exact = exact_ode_solution(LINEAR, noise, 1.0)
    errors = [np.abs(_sample(LINEAR, param, sampler="ddim", num_steps=n, eta=0.0) - exact).max()
              for n in (100, 1000)]
    assert errors[1] < 0.01
    # DDIM is a first-order solver: 10x the steps cuts the error roughly 10x (at least 5x).
    assert errors[1] < errors[0] / 5


def test_ddim_eta1_equals_ddpm_small_step_for_step():
    """DDIM with eta=1 is DDPM ancestral sampling with the posterior ('small') variance
    (Song et al. 2021, Sec. 4.1): same noise in, same samples out."""
    a = _sample(LINEAR, sampler="ddim", num_steps=50, eta=1.0)
    b = _sample(LINEAR, sampler="ddpm", num_steps=50, ddpm_variance="small")
    np.testing.assert_allclose(a, b, atol=2e-4)


@pytest.mark.parametrize("name", ["vp_cosine", "edm"])
def test_ddim_works_on_continuous_and_ve_schedules(name):
    from configs import base

    cfg = base.get_config().diffusion
    cfg.schedule = name
    schedule = schedules.get_schedule(cfg)
    x = _sample(schedule, sampler="ddim", num_steps=400, spacing="quadratic")
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(1), SHAPE))
    # VE starts from sigma_max * noise; the map is the same in standardised coordinates.
    start = noise * (1.0 if schedule.variance_preserving else float(schedule.sigma(1.0)))
    np.testing.assert_allclose(x, exact_ode_solution(schedule, start, 1.0), atol=0.02)


def test_time_grid_spacings():
    T = 1000
    idx = lambda ts: np.round(ts * T - 1).astype(int)  # noqa: E731
    np.testing.assert_array_equal(idx(sampling.time_grid(LINEAR, 10, "leading")),
                                  np.arange(0, 1000, 100)[::-1])
    np.testing.assert_array_equal(idx(sampling.time_grid(LINEAR, 10, "trailing")),
                                  np.arange(999, 0, -100))
    uniform = idx(sampling.time_grid(LINEAR, 1000, "uniform"))
    np.testing.assert_array_equal(uniform, np.arange(999, -1, -1))
    assert idx(sampling.time_grid(LINEAR, 10, "quadratic"))[-1] == 0


def test_nfe_is_one_per_step():
    calls = []

    def denoiser(x, t):
        calls.append(1)  # traced once per scan body, so count NFE by the returned value instead
        return jnp.zeros_like(x)

    _, nfe = sampling.sample(denoiser, LINEAR, "eps", jnp.zeros((2, 2, 2, 1)), jax.random.PRNGKey(0),
                             sampler="ddim", num_steps=17)
    assert nfe == 17


def test_unknown_sampler_raises():
    with pytest.raises(ValueError, match=r"sampler='heunn' is unknown; allowed: ddpm, ddim"):
        sampling.sample(None, LINEAR, "eps", jnp.zeros((1, 1, 1, 1)), jax.random.PRNGKey(0),
                        sampler="heunn")
