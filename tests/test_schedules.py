"""Noise schedules against closed forms and identities."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import schedules
from diffjax.core.parameterizations import make_parameterization

NAMES = schedules.SCHEDULES.names()


def test_ddpm_linear_alpha_bar_at_T_is_4p036e_5():
    alpha_bar = schedules.alpha_bar_from_betas(schedules.linear_betas(1000, 1e-4, 0.02))
    assert alpha_bar[-1] == pytest.approx(4.036e-5, rel=1e-3)
    sched = schedules.make_schedule("linear")
    assert float(sched.alpha(1.0)) ** 2 == pytest.approx(4.036e-5, rel=1e-3)


def test_cosine_schedule_matches_iddpm_eq17():
    T, s = 1000, 0.008
    alpha_bar = schedules.alpha_bar_from_betas(schedules.cosine_betas(T, s))
    t = np.arange(1, T + 1) / T
    f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
    f0 = np.cos(s / (1 + s) * np.pi / 2) ** 2
    # Only the last beta is clipped at 0.999 (iDDPM Sec. 3.2); all other steps follow eq. 17.
    np.testing.assert_allclose(alpha_bar[:-1], (f / f0)[:-1], rtol=1e-9)
    assert schedules.cosine_betas(T, s).max() == pytest.approx(0.999)


def test_sigmoid_betas_are_geodiffs():
    """GeoDiff (Xu et al. 2022), get_beta_schedule('sigmoid') of its models/epsnet/diffusion.py:
    beta_i = sigmoid(u_i) (beta_end - beta_start) + beta_start, u = linspace(-6, 6, T)."""
    start, end = 1e-4, 0.02
    for T in (5, 1000):
        u = [-6.0 + 12.0 * i / (T - 1) for i in range(T)]
        geodiff = [(end - start) / (1.0 + math.exp(-v)) + start for v in u]
        np.testing.assert_allclose(schedules.sigmoid_betas(T, start, end), geodiff, rtol=1e-12)
    # T = 5: u = -6, -3, 0, 3, 6; the middle beta is the midpoint of the range.
    assert schedules.sigmoid_betas(5, start, end)[2] == pytest.approx((start + end) / 2)
    registered = schedules.make_schedule("sigmoid")  # T = 1000, DDPM's range 1e-4 -> 0.02
    np.testing.assert_allclose(registered.betas, geodiff, rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_logsnr_is_strictly_decreasing(name):
    sched = schedules.make_schedule(name)
    t = jnp.linspace(1e-3, 1.0, 997)
    assert np.all(np.diff(np.asarray(sched.logsnr(t))) < 0)


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid", "vp_linear", "vp_cosine"])
def test_vp_alpha_squared_plus_sigma_squared_is_one(name):
    sched = schedules.make_schedule(name)
    t = jnp.linspace(1e-3, 1.0, 101)
    np.testing.assert_allclose(sched.alpha(t) ** 2 + sched.sigma(t) ** 2, 1.0, atol=1e-6)


@pytest.mark.parametrize("name", ["ve", "edm"])
def test_ve_has_unit_alpha_and_hits_sigma_range(name):
    sched = schedules.make_schedule(name)
    np.testing.assert_allclose(sched.alpha(jnp.linspace(0, 1, 5)), 1.0)
    assert float(sched.sigma(0.0)) == pytest.approx(sched.sigma_min, rel=1e-4)
    assert float(sched.sigma(1.0)) == pytest.approx(sched.sigma_max, rel=1e-4)
    wide = schedules.make_schedule(name, type(sched)(sigma_min=0.01, sigma_max=50.0))
    assert float(wide.sigma(1.0)) == pytest.approx(50.0, rel=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_t_from_logsnr_inverts_logsnr(name):
    sched = schedules.make_schedule(name)
    t = jnp.linspace(0.05, 0.95, 19)
    np.testing.assert_allclose(sched.t_from_logsnr(sched.logsnr(t)), t, atol=2e-4)


def test_vp_linear_matches_score_sde_marginal():
    # score_sde VPSDE.marginal_prob: mean coeff exp(-t^2 (b1 - b0) / 4 - t b0 / 2).
    sched = schedules.VPLinear(0.1, 20.0)
    t = np.linspace(0.01, 1, 7)
    mean_coeff = np.exp(-0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1)
    np.testing.assert_allclose(sched.alpha(t), mean_coeff, rtol=1e-5)


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_c_noise_is_the_ddpm_step_index_or_1000t(param):
    """Every parameterization conditions the network on the DDPM step index i on discrete
    schedules (t = (i + 1) / T) and on 1000 t on continuous ones (score_sde)."""
    p = make_parameterization(param)
    sched = schedules.make_schedule("linear")
    index = jnp.array([0, 1, 499, 999])
    np.testing.assert_allclose(p.c_noise(sched, sched.t_from_index(index)), index, atol=1e-3)
    t = jnp.array([0.001, 0.25, 1.0])
    np.testing.assert_allclose(p.c_noise(schedules.make_schedule("vp_cosine"), t),
                               [1.0, 250.0, 1000.0], rtol=1e-6)


def test_edm_c_noise_is_karras_table1_quarter_log_sigma():
    """EDM conditions its network on c_noise = ln(sigma) / 4 (Karras et al. 2022, Table 1):
    0.25 ln 0.002 = -1.5537, 0.25 ln 1 = 0, 0.25 ln 80 = 1.0955 on the VE schedule; on a VP
    schedule at the VE-equivalent sigma / alpha, as training and sampling both call it."""
    p = make_parameterization("edm")
    ve = schedules.make_schedule("edm")
    t = ve.t_from_logsnr(-2.0 * jnp.log(jnp.array([0.002, 1.0, 80.0])))
    np.testing.assert_allclose(p.c_noise(ve, t), [-1.553652, 0.0, 1.095523], atol=2e-5)
    vp = schedules.make_schedule("vp_cosine")
    t = jnp.array([0.1, 0.5, 0.9])
    sigma_ve = np.asarray(vp.sigma(t)) / np.asarray(vp.alpha(t))
    np.testing.assert_allclose(p.c_noise(vp, t), np.log(sigma_ve) / 4, rtol=1e-5)
    seen = []
    p.network_output(lambda x, c: seen.append(c) or x, jnp.ones((3, 2, 2, 1)), t, vp)
    np.testing.assert_allclose(seen[0], np.log(sigma_ve) / 4, rtol=1e-5)


def test_edm_sigma_grid_matches_karras_eq5():
    sched = schedules.EDMSchedule(0.002, 80.0, 7.0)
    n = 18
    i = np.arange(n)
    karras = (80.0 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    np.testing.assert_allclose(sched.sigma(1.0 - i / (n - 1)), karras, rtol=1e-4)


def test_unknown_schedule_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"config.diffusion.schedule='quux' is unknown; allowed: "
                                         r"linear, cosine"):
        schedules.make_schedule("quux")
    with pytest.raises(ValueError, match=r"beta_start=0.0001 is invalid: need 0 < beta_start < "
                                         r"beta_end \(=2.0\) < 1"):
        schedules.BetaRange(beta_end=2.0)
