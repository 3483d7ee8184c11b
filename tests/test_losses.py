"""Parameterizations and loss weightings: round trips and eps-space identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import schedules, time_sampling, weightings
from diffjax.core.parameterizations import (
    PARAMETERIZATIONS,
    edm_preconditioning,
    make_parameterization,
)
from diffjax.objectives.denoising import Denoising, DenoisingOptions

NAMES = PARAMETERIZATIONS.names()
FLOW = schedules.make_schedule("flow_linear")


def P(name, sigma_data=0.5):
    """The parameterization `name`; velocity's rates are the linear interpolant's (constant, so
    its identities hold at any alpha, sigma)."""
    return make_parameterization(name, sigma_data, schedule=FLOW)


def _draw(seed=0, batch=6):
    rng = np.random.default_rng(seed)
    x0 = jnp.asarray(rng.uniform(-1, 1, (batch, 4, 4, 2)), jnp.float32)
    eps = jnp.asarray(rng.standard_normal((batch, 4, 4, 2)), jnp.float32)
    logsnr = jnp.asarray(rng.uniform(-8, 8, batch), jnp.float32)
    alpha, sigma = jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))
    return x0, eps, alpha, sigma


@pytest.mark.parametrize("ve", [False, True])
@pytest.mark.parametrize("param", NAMES)
def test_converters_round_trip(param, ve):
    x0, eps, alpha, sigma = _draw()
    if ve:  # alpha = 1, sigma arbitrary: the v inversion must not assume alpha^2 + sigma^2 = 1
        alpha, sigma = jnp.ones_like(alpha), sigma / alpha
    x_t = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * eps
    output = P(param).target(x0, eps, alpha, sigma)
    x0_hat, eps_hat = P(param).x0_eps(x_t, output, alpha, sigma)
    np.testing.assert_allclose(x0_hat, x0, atol=2e-4)
    np.testing.assert_allclose(eps_hat, eps, atol=2e-4)


@pytest.mark.parametrize("param", NAMES)
def test_error_scale_is_the_ratio_of_target_to_eps_errors(param):
    """||target_hat - target||^2 == error_scale ||eps_hat - eps||^2 at fixed x_t, any output."""
    x0, eps, alpha, sigma = _draw(1)
    b = lambda c: c[:, None, None, None]  # noqa: E731
    x_t = b(alpha) * x0 + b(sigma) * eps
    output = jnp.asarray(np.random.default_rng(2).standard_normal(x0.shape), jnp.float32)
    _, eps_hat = P(param).x0_eps(x_t, output, alpha, sigma)
    tgt = P(param).target(x0, eps, alpha, sigma)
    mse = lambda a, b: jnp.mean((a - b) ** 2, (1, 2, 3))  # noqa: E731
    np.testing.assert_allclose(mse(output, tgt),
                               P(param).error_scale(alpha, sigma) * mse(eps_hat, eps), rtol=2e-3)


def _c_skip_out(param, alpha, sigma, sigma_data=0.5, sigma_min=0.0):
    """Closed-form (c_skip, c_out) of x0_hat = c_skip x_t + c_out F (Karras et al. 2022, eq. 7):
    eps: 1/alpha, -sigma/alpha;  x0: 0, 1;  v: alpha, -sigma over alpha^2 + sigma^2;
    edm: Table 1's at s = sigma/alpha on x_t / alpha;  velocity (rates -1, 1): x0 = (x_t - sigma
    v) / (alpha + sigma), also mean_velocity's (its output at r = t);  x0_latent: x0's;
    consistency: Song et al.
    2023 App. C's at s = sigma/alpha on x_t / alpha, sd^2 / ((s - s_min)^2 + sd^2) and
    sd (s - s_min) / sqrt(sd^2 + s^2)."""
    a, s, sd = np.asarray(alpha, np.float64), np.asarray(sigma, np.float64), sigma_data
    off = s / a - sigma_min
    return {"eps": (1 / a, -s / a), "x0": (0 * a, 1 + 0 * a),
            "consistency": (sd**2 / (off**2 + sd**2) / a, sd * off / np.sqrt(sd**2 + (s / a)**2)),
            "v": (a / (a**2 + s**2), -s / (a**2 + s**2)),
            "edm": (sd**2 / ((s / a) ** 2 + sd**2) / a,
                    (s / a) * sd / np.sqrt((s / a) ** 2 + sd**2)),
            "velocity": (1 / (a + s), -s / (a + s)),
            "mean_velocity": (1 / (a + s), -s / (a + s)),
            "x0_latent": (0 * a, 1 + 0 * a)}[param]


def _paper_x0_weight(weighting, param, alpha, sigma, gamma=5.0, sigma_data=0.5, sigma_min=0.0):
    """Each weighting's weight on ||x0_hat - x0||^2 as its paper writes it (float64 [B]):
    simple: the unweighted MSE of the network's own target F = (x0 - c_skip x_t) / c_out
            (Ho et al. 2020 L_simple), i.e. 1 / c_out^2 on x0;
    snr:    SNR = alpha^2 / sigma^2 (Kingma et al. 2021; equals the eps MSE);
    min_snr: min(SNR, gamma) (Hang et al. 2023, Sec. 3.4, on the x0 loss; min(SNR, gamma) / SNR
            on the eps loss);
    edm:    lambda(s) = (s^2 + sigma_data^2) / (s sigma_data)^2 at the VE-equivalent s = sigma /
            alpha (Karras et al. 2022, eq. 8 and Table 1)."""
    a, s = np.asarray(alpha, np.float64), np.asarray(sigma, np.float64)
    snr, ve_sigma = a**2 / s**2, s / a
    if weighting == "simple":
        return 1 / _c_skip_out(param, a, s, sigma_data, sigma_min)[1] ** 2
    if weighting == "snr":
        return snr
    if weighting == "min_snr":
        return np.minimum(snr, gamma)
    return (ve_sigma**2 + sigma_data**2) / (ve_sigma * sigma_data) ** 2


@pytest.mark.parametrize("weighting", weightings.WEIGHTINGS)
@pytest.mark.parametrize("param", NAMES)
def test_weighted_loss_is_the_papers_weight_on_the_x0_error(param, weighting):
    """The denoising loss of a fixed network output F at t in {0.05, 0.15, 0.5, 0.9} (SNR from
    ~250 to ~0.025, both sides of gamma = 5) equals the paper's weight times ||x0_hat - x0||^2,
    with x0_hat = c_skip x_t + c_out F from the closed forms."""
    flow = param in ("velocity", "mean_velocity")
    schedule = schedules.make_schedule("flow_linear" if flow else "vp_cosine")
    options = DenoisingOptions(weighting=weighting, min_snr_gamma=5.0)
    objective = Denoising(schedule, make_parameterization(param, 0.5, schedule=schedule), options)
    rng = np.random.default_rng(10)
    t = jnp.array([0.05, 0.15, 0.5, 0.9], jnp.float32)
    x0 = jnp.asarray(rng.uniform(-1, 1, (4, 4, 4, 2)), jnp.float32)
    eps = jnp.asarray(rng.standard_normal((4, 4, 4, 2)), jnp.float32)
    output = jnp.asarray(rng.standard_normal((4, 4, 4, 2)), jnp.float32)
    loss = objective.per_example_loss(lambda net_input, c_noise: output, x0, t, eps)
    alpha = np.asarray(schedule.alpha(t), np.float64)
    sigma = np.asarray(schedule.sigma(t), np.float64)
    snr = alpha**2 / sigma**2
    assert snr.max() > 5.0 > snr.min()
    s_min = float(schedule.sigma(0.0)) / float(schedule.alpha(0.0))
    c_skip, c_out = _c_skip_out(param, alpha, sigma, sigma_min=s_min)
    b = lambda c: c[:, None, None, None]  # noqa: E731
    x0_64, eps_64 = np.asarray(x0, np.float64), np.asarray(eps, np.float64)
    x_t = b(alpha) * x0_64 + b(sigma) * eps_64
    x0_hat = b(c_skip) * x_t + b(c_out) * np.asarray(output, np.float64)
    expected = (_paper_x0_weight(weighting, param, alpha, sigma, sigma_min=s_min)
                * np.mean((x0_hat - x0_64) ** 2, (1, 2, 3)))
    np.testing.assert_allclose(loss, expected, rtol=2e-4)


def test_min_snr_weights_match_hang_et_al():
    """Min-SNR-gamma (Hang et al. 2023): eps-pred min(SNR, g)/SNR, x0-pred min(SNR, g),
    v-pred min(SNR, g)/(SNR + 1)."""
    _, _, alpha, sigma = _draw(3)
    snr = alpha**2 / sigma**2
    g = 5.0
    for param, expected in [("eps", jnp.minimum(snr, g) / snr), ("x0", jnp.minimum(snr, g)),
                            ("v", jnp.minimum(snr, g) / (snr + 1))]:
        np.testing.assert_allclose(weightings.loss_weight("min_snr", P(param), alpha, sigma, g),
                                   expected, rtol=1e-4)


def test_edm_weight_is_karras_lambda_on_x0():
    sigma = jnp.array([0.01, 0.5, 3.0, 80.0])
    alpha = jnp.ones_like(sigma)
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    np.testing.assert_allclose(weightings.loss_weight("edm", P("x0"), alpha, sigma, sigma_data=0.5),
                               lam, rtol=1e-5)


def test_uniform_time_sampling_on_discrete_grid():
    sched = schedules.DiscreteSchedule(tuple(schedules.linear_betas(1000)))
    t = time_sampling.sample_time(jax.random.PRNGKey(0), 4096, sched, "uniform")
    index = np.asarray(t) * 1000 - 1
    np.testing.assert_allclose(index, np.round(index), atol=1e-3)
    assert index.min() >= 0 and index.max() <= 999 and len(np.unique(np.round(index))) > 900


def test_lognormal_time_sampling_gives_lognormal_sigma():
    sched = schedules.EDMSchedule(0.002, 80.0, 7.0)
    t = time_sampling.sample_time(jax.random.PRNGKey(0), 20000, sched, "lognormal", -1.2, 1.2)
    log_sigma = np.log(np.asarray(sched.sigma(t)))
    # EDM lognormal: ln sigma ~ N(-1.2, 1.2^2), truncated to [sigma_min, sigma_max] (3.8 / 3.7 sd).
    assert log_sigma.mean() == pytest.approx(-1.2, abs=0.04)
    assert log_sigma.std() == pytest.approx(1.2, abs=0.04)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match=r"config.diffusion.parameterization='score' is unknown; "
                                         r"allowed: eps, x0"):
        P("score")
    with pytest.raises(ValueError, match=r"weighting='p2' is unknown; allowed: simple, snr"):
        weightings.eps_weight("p2", P("eps"), 1.0, 1.0)


def test_edm_preconditioning_is_karras_table1():
    """EDM Table 1 on a VE schedule (alpha = 1): c_skip = sd^2 / (s^2 + sd^2), c_out =
    s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2), and D = c_skip x + c_out F."""
    sigma = jnp.array([0.002, 0.1, 0.5, 3.0, 80.0])
    alpha, sd = jnp.ones_like(sigma), 0.5
    c_skip, c_out, c_in = edm_preconditioning(alpha, sigma, sd)
    np.testing.assert_allclose(c_skip, sd**2 / (sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_out, sigma * sd / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(P("edm", sd).c_in(alpha, sigma), c_in, rtol=1e-6)
    x_t = jnp.asarray(np.random.default_rng(0).standard_normal((5, 2, 2, 1)), jnp.float32)
    out = jnp.asarray(np.random.default_rng(1).standard_normal((5, 2, 2, 1)), jnp.float32)
    x0, _ = P("edm", sd).x0_eps(x_t, out, alpha, sigma)
    b = lambda c: c[:, None, None, None]  # noqa: E731
    np.testing.assert_allclose(x0, b(c_skip) * x_t + b(c_out) * out, rtol=1e-5, atol=1e-6)


def test_edm_on_vp_equals_edm_on_its_ve_equivalent():
    """On a VP schedule the EDM target and network input are those of the VE schedule with
    sigma / alpha acting on x_t / alpha (Karras et al. 2022, eq. 4 with s(t) = alpha)."""
    x0, eps, alpha, sigma = _draw(5)
    b = lambda c: c[:, None, None, None]  # noqa: E731
    np.testing.assert_allclose(P("edm").target(x0, eps, alpha, sigma),
                               P("edm").target(x0, eps, jnp.ones_like(alpha), sigma / alpha),
                               rtol=2e-4, atol=2e-5)
    x_t = b(alpha) * x0 + b(sigma) * eps
    vp_input = b(P("edm").c_in(alpha, sigma)) * x_t
    ve_input = b(P("edm").c_in(1.0, sigma / alpha)) * (x_t / b(alpha))
    np.testing.assert_allclose(vp_input, ve_input, rtol=2e-4, atol=2e-5)


def test_edm_lambda_is_one_over_c_out_squared():
    """EDM chooses lambda(sigma) = 1 / c_out^2 so that the loss on F has weight 1 (Sec. 5);
    the loss of the edm weighting on F itself is checked in
    test_weighted_loss_is_the_papers_weight_on_the_x0_error."""
    sigma = jnp.array([0.01, 1.0, 50.0])
    _, c_out, _ = edm_preconditioning(1.0, sigma)
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    np.testing.assert_allclose(lam * c_out**2, 1.0, rtol=1e-5)


@pytest.mark.parametrize("param", NAMES)
def test_training_feeds_the_network_through_network_output(param):
    """The denoising loss calls the network on c_in x_t (EDM's 1 / sqrt(sigma^2 + alpha^2 sd^2);
    1 otherwise; consistency uses EDM's) and c_noise(t) (EDM's ln(sigma / alpha) / 4, CM's 250
    ln(sigma / alpha), else 1000 t on a continuous schedule), exactly as the sampler's
    network_output does, with eps = normal(split(rng)[1]) and x_t = alpha x0 + sigma eps."""
    sched = schedules.make_schedule("vp_cosine")
    objective = Denoising(sched, P(param))
    x0 = jnp.asarray(np.random.default_rng(7).uniform(-1, 1, (4, 2, 2, 1)), jnp.float32)
    seen = {}

    def apply(params, net_input, noise_cond, cond):
        seen["input"], seen["cond"] = net_input, noise_cond
        return jnp.zeros_like(net_input)

    rng = jax.random.PRNGKey(3)
    inputs = objective.prepare(x0, {}, rng, None)
    objective.loss({"network": None}, apply, inputs, {}, 0)
    t = inputs["t"]
    eps = jax.random.normal(jax.random.split(rng)[1], x0.shape)
    np.testing.assert_array_equal(inputs["eps"], eps)
    alpha, sigma = sched.alpha(t)[:, None, None, None], sched.sigma(t)[:, None, None, None]
    x_t = alpha * x0 + sigma * eps
    preconditioned = param in ("edm", "consistency")
    scale = 1 / jnp.sqrt(sigma**2 + alpha**2 * 0.25) if preconditioned else 1.0
    np.testing.assert_allclose(seen["input"], scale * x_t, rtol=1e-5, atol=1e-6)
    log_s = jnp.log(sigma[:, 0, 0, 0] / alpha[:, 0, 0, 0])
    c_noise = {"edm": log_s / 4, "consistency": 250 * log_s}.get(param, 1000.0 * t)
    if param == "mean_velocity":  # (1000 t, 1000 (t - r)) at r = t
        c_noise = (1000.0 * t, jnp.zeros_like(t))
    if param == "x0_latent":  # (c_noise(t), z), z = 0 without a latent
        c_noise = (1000.0 * t, jnp.zeros((t.shape[0], 100)))
    assert len(jax.tree.leaves(seen["cond"])) == len(jax.tree.leaves(c_noise))
    for got, want in zip(jax.tree.leaves(seen["cond"]), jax.tree.leaves(c_noise)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    P(param).network_output(lambda x, c: apply(None, x, c, {}), x_t, t, sched)
    np.testing.assert_allclose(seen["input"], scale * x_t, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ve", [False, True])
@pytest.mark.parametrize("param", NAMES)
def test_x0_is_c_skip_x_t_plus_c_out_times_the_output(param, ve):
    """Every parameterization's denoised estimate has the preconditioned form
    x0_hat = c_skip x_t + c_out F (Karras et al. 2022, eq. 7), with its own c_skip, c_out:
    eps: 1/alpha, -sigma/alpha;  x0: 0, 1;  v: alpha, -sigma over alpha^2 + sigma^2;
    edm: Table 1's on x_t / alpha."""
    _, _, alpha, sigma = _draw(8)
    if ve:
        alpha, sigma = jnp.ones_like(alpha), sigma / alpha
    rng = np.random.default_rng(9)
    x_t = jnp.asarray(rng.standard_normal((6, 4, 4, 2)), jnp.float32)
    out = jnp.asarray(rng.standard_normal((6, 4, 4, 2)), jnp.float32)
    expected = _c_skip_out(param, alpha, sigma)
    c_skip, c_out = P(param).c_skip_out(alpha, sigma)
    np.testing.assert_allclose(c_skip, expected[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(c_out, expected[1], rtol=1e-5, atol=1e-7)
    x0, _ = P(param).x0_eps(x_t, out, alpha, sigma)
    b = lambda c: np.asarray(c)[:, None, None, None]  # noqa: E731
    np.testing.assert_allclose(x0, b(expected[0]) * x_t + b(expected[1]) * out, rtol=2e-4,
                               atol=2e-5)
