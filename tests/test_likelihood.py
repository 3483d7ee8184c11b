"""Likelihood (--mode=likelihood) against closed forms: Gaussian data N(mu, Sigma) with its exact
denoiser, whose probability-flow ODE map is affine, the DDPM bound's expected terms, Hutchinson's
estimator against the exact trace, the units of bits/dim and the discretized decoder."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffjax.core import likelihood as lik
from diffjax.core import schedules, vlb
from diffjax.core.parameterizations import make_parameterization
from diffjax.errors import ConfigError
from diffjax.modes import likelihood as mode
from diffjax.samplers.grids import sigma_ve
from diffjax.samplers.prediction import initial_x
from diffjax.settings import LikelihoodOptions

SHAPE = (2, 2, 2)  # D = 8: a correlated Gaussian, so Rademacher probes are not exact either
DIMS = 8
_rng = np.random.default_rng(0)
MU = _rng.normal(0.0, 0.3, DIMS)
_A = _rng.normal(0.0, 0.25, (DIMS, DIMS))
COV = _A @ _A.T + 0.05 * np.eye(DIMS)
EIGVALS, EIGVECS = np.linalg.eigh(COV)


def gaussian_denoiser(schedule, parameterization):
    """The exact E[x0 | x_t] for x0 ~ N(MU, COV): MU + COV (COV + s^2 I)^-1 (x_t / alpha - MU)
    with s = sigma / alpha, as the network output in `parameterization`."""
    param = make_parameterization(parameterization, schedule=schedule)
    mu, vecs, lam = (jnp.asarray(v, jnp.float32) for v in (MU, EIGVECS, EIGVALS))

    def denoiser(x_t, t):
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        y = x_t.reshape(x_t.shape[0], DIMS) / alpha[:, None]
        shrink = lam / (lam + (sigma / alpha)[:, None] ** 2)
        x0 = mu + ((y - mu) @ vecs * shrink) @ vecs.T
        x0 = x0.reshape(x_t.shape)
        eps = (x_t - alpha[:, None, None, None] * x0) / sigma[:, None, None, None]
        return param.target(x0, eps, alpha, sigma)

    return denoiser


def model_nll(schedule, x, t_min, t_max):
    """-log p(x) of the exact PF-ODE model in closed form (float64): standardised coordinates
    along COV's eigenvectors are preserved, so y_hi = MU + U diag(sqrt((lam + s_hi^2) /
    (lam + s_lo^2))) U^T (y_lo - MU), pushed to the samplers' prior, with the log-Jacobian."""
    s_lo, s_hi = sigma_ve(schedule, [t_min, t_max])
    a_lo, a_hi = (float(schedule.alpha(jnp.float32(t))) for t in (t_min, t_max))
    prior_std = float(initial_x(schedule, jnp.ones(()), t_max)) / a_hi
    y_lo = np.asarray(x, np.float64).reshape(len(x), DIMS) / a_lo
    scale = np.sqrt((EIGVALS + s_hi**2) / (EIGVALS + s_lo**2))
    y_hi = MU + ((y_lo - MU) @ EIGVECS * scale) @ EIGVECS.T
    log_prior = stats.norm.logpdf(y_hi, 0.0, prior_std).sum(-1)
    return -(log_prior + np.log(scale).sum() - DIMS * math.log(a_lo))


def data_nll(x, sigma_lo):
    """-log N(x; MU, COV + sigma_lo^2 I): the data density at the ODE's data end (alpha = 1)."""
    flat = np.asarray(x, np.float64).reshape(len(x), DIMS)
    return -stats.multivariate_normal(MU, COV + sigma_lo**2 * np.eye(DIMS)).logpdf(flat)


def _gaussian_data(n, seed=1):
    rng = np.random.default_rng(seed)
    return (MU + rng.normal(size=(n, DIMS)) @ np.linalg.cholesky(COV).T).reshape(n, *SHAPE)


def _ode_nll(schedule, parameterization, x, seed=0, **options):
    opts = LikelihoodOptions(**options)
    t_min, t_max = mode.t_range(schedule, opts.t_min)
    nll = mode.ode_nll(schedule, parameterization, gaussian_denoiser(schedule, parameterization),
                       opts, t_min, t_max)
    out, nfe = jax.jit(nll)(jnp.asarray(x, jnp.float32), jax.random.PRNGKey(seed))
    assert int(nfe) > 0
    return np.asarray(out, np.float64), (t_min, t_max)


CASES = [("linear", "eps"), ("vp_linear", "v"), ("edm", "edm"), ("flow_linear", "velocity")]


@pytest.mark.parametrize("schedule_name, parameterization", CASES,
                         ids=[f"{s}-{p}" for s, p in CASES])
def test_pf_ode_exact_divergence_gives_the_closed_form_gaussian_density(schedule_name,
                                                                        parameterization):
    """score_sde App. D.2 with the exact trace: -log p(x) of the model equals the closed-form
    density of the affine PF-ODE map to ODE tolerance, for every kind of schedule."""
    schedule = schedules.make_schedule(schedule_name)
    x = _gaussian_data(16)
    nll, (t_min, t_max) = _ode_nll(schedule, parameterization, x, probe="exact")
    np.testing.assert_allclose(nll, model_nll(schedule, x, t_min, t_max), atol=2e-3)
    if schedule_name == "edm":  # prior N(0, 80^2) ~ the marginal N(MU, COV + 80^2): the
        # data's own density, up to the prior's missing mean (|y_T MU| / 80^2 ~ 0.004 per dim)
        sigma_lo = float(sigma_ve(schedule, [t_min])[0])
        np.testing.assert_allclose(nll, data_nll(x, sigma_lo), atol=0.05)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_pf_ode_hutchinson_is_unbiased_for_the_gaussian_density(probe):
    """With one probe per image, held fixed along its solve, the estimate's error against the
    closed form averages to zero within 3 standard errors over 512 images."""
    schedule = schedules.make_schedule("edm")
    x = _gaussian_data(512, seed=2)
    nll, (t_min, t_max) = _ode_nll(schedule, "edm", x, probe=probe)
    error = nll - model_nll(schedule, x, t_min, t_max)
    assert error.std() > 0.05  # a real estimator: the divergence is not the same for every probe
    assert abs(error.mean()) < 3 * error.std(ddof=1) / math.sqrt(len(error)) + 2e-3


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_mean_equals_the_exact_jacobian_trace_of_a_random_mlp(probe):
    """E[v^T J v] = tr J (Hutchinson 1990) for a small random tanh MLP mixing all dimensions."""
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    w1 = jax.random.normal(keys[0], (DIMS, 32)) / math.sqrt(DIMS)
    w2 = jax.random.normal(keys[1], (32, DIMS)) / math.sqrt(32)

    def fn(x):
        flat = x.reshape(x.shape[0], DIMS)
        return (jnp.tanh(flat @ w1 + 0.3) @ w2 + 0.5 * flat).reshape(x.shape)

    x = jax.random.normal(keys[2], (3, *SHAPE))
    out, exact = lik.drift_and_divergence(fn, x)
    np.testing.assert_allclose(out, fn(x), rtol=1e-6)
    jacobians = jax.vmap(jax.jacfwd(lambda v: fn(v[None])[0].reshape(DIMS)))(x)
    np.testing.assert_allclose(exact, jnp.trace(jacobians.reshape(3, DIMS, DIMS), axis1=1,
                                                 axis2=2), rtol=1e-5)
    probes = lik.draw_probes(keys[3], probe, 4096, x.shape)
    single = jax.vmap(lambda v: lik.drift_and_divergence(fn, x, v[None])[1])(probes)  # [K, B]
    sem = np.asarray(single.std(0, ddof=1)) / math.sqrt(4096)
    assert np.all(sem > 0)
    assert np.all(np.abs(np.asarray(single.mean(0) - exact)) < 3 * sem + 1e-5)


# ---------------------------------------------------------------------------------------------
# Units and the decoder.


def test_a_uniform_density_on_the_cube_gives_exactly_8_bits_per_dim():
    """Dequantized 8-bit images x = (k + u) / 128 - 1 under the uniform density 2^-D on
    [-1, 1]^D: -log2 p / D + 7 = 8 bits/dim; read at the grid points (no dequantization) with
    bin width 2/255 it is 1 + log2(127.5)."""
    levels = jnp.asarray(np.random.default_rng(4).integers(0, 256, (5, 4, 4, 3)), jnp.float32)
    uniform = lambda x: (jnp.full((x.shape[0],), x[0].size * math.log(2.0)), None)  # noqa: E731
    bpd, _ = lik.image_bits_per_dim(levels, jax.random.PRNGKey(0), "uniform", uniform)
    np.testing.assert_allclose(bpd, 8.0, rtol=1e-6)
    bpd, _ = lik.image_bits_per_dim(levels, jax.random.PRNGKey(0), "none", uniform)
    np.testing.assert_allclose(bpd, 1.0 + math.log2(127.5), rtol=1e-6)


def test_dequantized_bits_per_dim_of_uniform_images_under_a_standard_normal():
    """Levels uniform on {0..255} + U[0, 1) noise fill [-1, 1) uniformly: under N(0, I) the
    expected bits/dim is (log(2 pi) / 2 + E[x^2] / 2 + log 128) / ln 2 with E[x^2] = 1/3."""
    levels = jnp.asarray(np.random.default_rng(5).integers(0, 256, (4096, 2, 2, 1)), jnp.float32)

    def normal_nll(x):
        flat = x.reshape(x.shape[0], -1)
        assert float(flat.min()) >= -1.0 and float(flat.max()) < 1.0
        return jnp.sum(0.5 * flat**2 + 0.5 * math.log(2 * math.pi), -1), None

    bpd, _ = lik.image_bits_per_dim(levels, jax.random.PRNGKey(1), "uniform", normal_nll)
    expected = (0.5 * math.log(2 * math.pi) + 1 / 6 + math.log(128)) / math.log(2)
    sem = float(np.std(bpd, ddof=1)) / math.sqrt(bpd.size)
    assert abs(float(np.mean(bpd)) - expected) < 3 * sem


def test_discretized_gaussian_decoder_matches_scipy_bin_probabilities():
    """improved-diffusion's decoder: log of the N(mean, scale^2) mass of each level's bin
    [x - 1/255, x + 1/255], the end bins open; the tanh CDF is within 3e-4 of the normal CDF,
    and the 256 bins' probabilities sum to 1."""
    x = np.arange(256) / 127.5 - 1.0
    for mean, scale in [(0.1, 0.05), (-0.97, 0.02), (0.5, 0.3), (0.99, 0.01)]:
        log_p = np.asarray(vlb.discretized_gaussian_log_likelihood(
            jnp.asarray(x, jnp.float32), mean, jnp.float32(math.log(scale))), np.float64)
        lo = np.where(x < -0.999, -np.inf, x - 1 / 255)
        hi = np.where(x > 0.999, np.inf, x + 1 / 255)
        mass = stats.norm.cdf(hi, mean, scale) - stats.norm.cdf(lo, mean, scale)
        big = mass > 1e-3
        np.testing.assert_allclose(np.exp(log_p[big]), mass[big], atol=6e-4)
        assert np.exp(log_p).sum() == pytest.approx(1.0, abs=1e-4)
    grid = np.linspace(-6, 6, 1001)
    np.testing.assert_allclose(vlb.approx_standard_normal_cdf(jnp.asarray(grid)),
                               stats.norm.cdf(grid), atol=3e-4)


# ---------------------------------------------------------------------------------------------
# The discrete-time bound.


def nested_schedule(num_timesteps):
    """Levels at log-SNR 8 -> -10 linearly in k / (T - 1): the grids of T = 5, 17, 65 are nested
    and share their first (the decoder's) and last (the prior's) levels."""
    lam = 8.0 - 18.0 * np.arange(num_timesteps) / (num_timesteps - 1)
    alpha_bar = 1.0 / (1.0 + np.exp(-lam))
    betas = 1.0 - alpha_bar / np.append(1.0, alpha_bar[:-1])
    return schedules.DiscreteSchedule(tuple(betas), "nested")


def expected_vlb_per_dim(tables, mu, s):
    """E over x0 ~ N(mu, s^2) of the bound with the exact denoiser, per dimension, 'small'
    variance and a Gaussian decoder of variance sigma_1^2 / alpha_1^2: with the MMSE
    m_i = s^2 (1 - a_i) / (a_i s^2 + 1 - a_i), KL_i = c_i^2 m_i / (2 beta_tilde_i)."""
    ab = tables.alpha_bar
    mmse = s**2 * (1 - ab) / (ab * s**2 + 1 - ab)
    kl = (tables.coef_x0[1:] ** 2 * mmse[1:] / (2 * tables.posterior_variance[1:])).sum()
    c = math.log((1 - ab[0]) / ab[0])
    decoder = 0.5 * math.log(2 * math.pi) + c / 2 + mmse[0] * math.exp(-c) / 2
    prior = 0.5 * (-1 - math.log(1 - ab[-1]) + 1 - ab[-1] + ab[-1] * (mu**2 + s**2))
    return kl + decoder + prior


def test_ddpm_vlb_bounds_the_gaussian_nll_and_tightens_as_T_grows():
    """Ho et al. 2020 eq. 5 on N(mu, s^2) data with the exact denoiser and the posterior
    variance: refining a nested time grid lowers the bound (each KL is a Riemann sum of the
    MMSE, which falls with SNR; VDM, Kingma et al. 2021, Sec. 3), the bound stays above the
    closed-form NLL, and each Monte Carlo estimate matches its closed-form expectation."""
    mu, s, n = 0.3, 0.5, 1024
    x0 = jnp.asarray(np.random.default_rng(6).normal(mu, s, (n, 2, 2, 1)), jnp.float32)
    closed_form = -stats.norm.logpdf(np.asarray(x0, np.float64), mu, s).mean()  # per dim
    estimates = []
    for num_timesteps in (5, 17, 65):
        schedule = nested_schedule(num_timesteps)
        tables = vlb.PosteriorTables.from_betas(schedule.betas)

        def model(x_t, index, schedule=schedule):
            t = schedule.t_from_index(index)
            alpha = schedule.alpha(t)[:, None, None, None]
            sigma = schedule.sigma(t)[:, None, None, None]
            return mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (x_t - alpha * mu), None

        table = tables.log_variance("small").copy()
        table[0] = math.log((1 - tables.alpha_bar[0]) / tables.alpha_bar[0])
        out = jax.jit(lambda x, k, m=model, tb=tables, lv=table: vlb.vlb_nats(
            m, x, tb, k, decoder="gaussian", log_variance=lv)["total"])(x0, jax.random.PRNGKey(7))
        per_dim = np.asarray(out, np.float64) / 4
        sem = per_dim.std(ddof=1) / math.sqrt(n)
        assert abs(per_dim.mean() - expected_vlb_per_dim(tables, mu, s)) < 3 * sem
        estimates.append((per_dim.mean(), sem))
    for (coarse, se_coarse), (fine, se_fine) in zip(estimates, estimates[1:]):
        assert coarse - fine > 3 * math.hypot(se_coarse, se_fine)
    assert estimates[-1][0] - closed_form > 3 * estimates[-1][1]
    assert estimates[-1][0] - closed_form < 0.6  # nats per dim (0.43 expected at T = 65; 40 at 5)


# ---------------------------------------------------------------------------------------------
# Refusals.


@dataclasses.dataclass
class _Exp:
    """The parts check_likelihood reads."""

    schedule: object
    parameterization: object
    likelihood: LikelihoodOptions
    network: object = None
    x_shape: tuple = (28, 28, 1)
    codec: object = dataclasses.field(default_factory=lambda: type("C", (), {"name": "pixels"}))
    config: object = None


def _exp(schedule="linear", param="eps", shape=(28, 28, 1), **options):
    sched = schedules.make_schedule(schedule)
    net = type("N", (), {"extra_outputs": ()})()
    config = type("Cfg", (), {"model": type("M", (), {"name": "unet"})})()
    return _Exp(sched, make_parameterization(param, schedule=sched), LikelihoodOptions(**options),
                net, shape, config=config)


@pytest.mark.parametrize("exp, match", [
    (lambda: _exp("edm", bound="vlb"), r"config.likelihood.bound='vlb' needs a discrete.*"
                                       r"diffusion.schedule='edm'"),
    (lambda: _exp("vp_linear", bound="vlb"), r"diffusion.schedule='vp_linear'"),
    (lambda: _exp("edm", "consistency"), r"config.diffusion.parameterization='consistency'"),
    (lambda: _exp("flow_linear", "mean_velocity"), r"parameterization='mean_velocity'"),
    (lambda: _exp("edm", "x0_latent"), r"parameterization='x0_latent'"),
    (lambda: _exp(shape=(64, 64, 3), probe="exact"), r"config.likelihood.probe='exact'.*12288"),
    (lambda: _exp(bound="vlb", variance="learned"), r"config.likelihood.variance='learned' "
                                                    r"needs a network with a variance output"),
    (lambda: _exp(t_min=0.0), r"config.likelihood.t_min=0.0 is invalid"),
], ids=["vlb-edm", "vlb-vp-linear", "ode-consistency", "ode-mean-velocity", "ode-x0-latent",
        "exact-too-large", "learned-without-variance", "t-min-below-step-0"])
def test_likelihood_refuses_what_its_bound_cannot_score(exp, match):
    with pytest.raises(ConfigError, match=match):
        mode.check_likelihood(exp())


def test_likelihood_options_name_the_bad_field():
    with pytest.raises(ConfigError, match="probe='hutchinson' is unknown"):
        LikelihoodOptions(probe="hutchinson")
    with pytest.raises(ConfigError, match="bound='elbo' is unknown"):
        LikelihoodOptions(bound="elbo")
