"""Parameterizations and loss weightings: round trips and eps-space identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import losses, schedules


def _draw(seed=0, batch=6):
    rng = np.random.default_rng(seed)
    x0 = jnp.asarray(rng.uniform(-1, 1, (batch, 4, 4, 2)), jnp.float32)
    eps = jnp.asarray(rng.standard_normal((batch, 4, 4, 2)), jnp.float32)
    logsnr = jnp.asarray(rng.uniform(-8, 8, batch), jnp.float32)
    alpha, sigma = jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))
    return x0, eps, alpha, sigma


@pytest.mark.parametrize("ve", [False, True])
@pytest.mark.parametrize("param", losses.PARAMETERIZATIONS)
def test_converters_round_trip(param, ve):
    x0, eps, alpha, sigma = _draw()
    if ve:  # alpha = 1, sigma arbitrary: the v inversion must not assume alpha^2 + sigma^2 = 1
        alpha, sigma = jnp.ones_like(alpha), sigma / alpha
    x_t = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * eps
    output = losses.target(param, x0, eps, alpha, sigma)
    x0_hat, eps_hat = losses.x0_eps_from_output(param, x_t, output, alpha, sigma)
    np.testing.assert_allclose(x0_hat, x0, atol=2e-4)
    np.testing.assert_allclose(eps_hat, eps, atol=2e-4)


@pytest.mark.parametrize("weighting", losses.WEIGHTINGS)
@pytest.mark.parametrize("param", losses.PARAMETERIZATIONS)
def test_weighted_loss_equals_its_eps_space_form(param, weighting):
    """w_target * ||target_hat - target||^2 == w_eps * ||eps_hat - eps||^2 for any network output."""
    x0, eps, alpha, sigma = _draw(1)
    b = lambda c: c[:, None, None, None]  # noqa: E731
    x_t = b(alpha) * x0 + b(sigma) * eps
    output = jnp.asarray(np.random.default_rng(2).standard_normal(x0.shape), jnp.float32)
    _, eps_hat = losses.x0_eps_from_output(param, x_t, output, alpha, sigma)
    tgt = losses.target(param, x0, eps, alpha, sigma)
    lhs = losses.loss_weight(weighting, param, alpha, sigma) * jnp.mean((output - tgt) ** 2, (1, 2, 3))
    rhs = losses.eps_weight(weighting, param, alpha, sigma) * jnp.mean((eps_hat - eps) ** 2, (1, 2, 3))
    np.testing.assert_allclose(lhs, rhs, rtol=2e-3)


def test_min_snr_weights_match_hang_et_al():
    """Min-SNR-gamma (Hang et al. 2023): eps-pred min(SNR, g)/SNR, x0-pred min(SNR, g),
    v-pred min(SNR, g)/(SNR + 1)."""
    _, _, alpha, sigma = _draw(3)
    snr = alpha**2 / sigma**2
    g = 5.0
    for param, expected in [("eps", jnp.minimum(snr, g) / snr), ("x0", jnp.minimum(snr, g)),
                            ("v", jnp.minimum(snr, g) / (snr + 1))]:
        np.testing.assert_allclose(losses.loss_weight("min_snr", param, alpha, sigma, g), expected,
                                   rtol=1e-4)


def test_edm_weight_is_karras_lambda_on_x0():
    sigma = jnp.array([0.01, 0.5, 3.0, 80.0])
    alpha = jnp.ones_like(sigma)
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    np.testing.assert_allclose(losses.loss_weight("edm", "x0", alpha, sigma, sigma_data=0.5), lam,
                               rtol=1e-5)


def test_simple_weight_is_one_on_own_target():
    _, _, alpha, sigma = _draw(4)
    for param in losses.PARAMETERIZATIONS:
        np.testing.assert_allclose(losses.loss_weight("simple", param, alpha, sigma), 1.0, rtol=1e-5)


def test_uniform_time_sampling_on_discrete_grid():
    sched = schedules.DiscreteSchedule(tuple(schedules.linear_betas(1000)))
    t = losses.sample_time(jax.random.PRNGKey(0), 4096, sched, "uniform")
    index = np.asarray(t) * 1000 - 1
    np.testing.assert_allclose(index, np.round(index), atol=1e-3)
    assert index.min() >= 0 and index.max() <= 999 and len(np.unique(np.round(index))) > 900


def test_lognormal_time_sampling_gives_lognormal_sigma():
    sched = schedules.EDMSchedule(0.002, 80.0, 7.0)
    t = losses.sample_time(jax.random.PRNGKey(0), 20000, sched, "lognormal", -1.2, 1.2)
    log_sigma = np.log(np.asarray(sched.sigma(t)))
    # EDM lognormal: ln sigma ~ N(-1.2, 1.2^2), truncated to [sigma_min, sigma_max] (3.8 sd / 3.7 sd).
    assert log_sigma.mean() == pytest.approx(-1.2, abs=0.04)
    assert log_sigma.std() == pytest.approx(1.2, abs=0.04)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match=r"parameterization='score' is unknown; allowed: eps, x0, v"):
        losses.target("score", 0, 0, 1, 1)
    with pytest.raises(ValueError, match=r"weighting='p2' is unknown; allowed: simple, snr"):
        losses.eps_weight("p2", "eps", 1.0, 1.0)
