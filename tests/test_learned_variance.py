"""iDDPM's learned reverse variances (Nichol & Dhariwal 2021, eq. 15) and L_hybrid (eq. 16):
the interpolation's ends, the VLB term against a closed-form Gaussian KL, the ddpm sampler at
v = +-1 against the fixed variances, the stop-gradient on the mean, and an L_hybrid run scored
by --mode=likelihood."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import samplers as sampling
from diffjax.core import schedules, vlb
from diffjax.core.parameterizations import make_parameterization
from diffjax.errors import ConfigError
from diffjax.models.network import Network
from diffjax.objectives.denoising import Denoising, DenoisingOptions, check_vlb
from diffjax.samplers import ancestral

COSINE = schedules.make_schedule("cosine", schedules.CosineOptions(num_timesteps=100))
LINEAR = schedules.DiscreteSchedule(tuple(schedules.linear_betas(1000)))


def test_eq15_at_v_minus_1_and_plus_1_gives_beta_tilde_and_beta():
    tables = vlb.PosteriorTables.from_betas(COSINE.betas)
    betas = np.asarray(COSINE.betas)
    ab = np.cumprod(1 - betas)
    beta_tilde = betas[1:] * (1 - ab[:-1]) / (1 - ab[1:])  # Ho et al. eq. 7, steps t >= 2
    index = jnp.arange(1, 100)
    for v, expected in ((-1.0, beta_tilde), (1.0, betas[1:])):
        log_var = vlb.model_log_variance(tables, index, "learned",
                                         jnp.full((99, 1, 1, 1), v, jnp.float32))
        np.testing.assert_allclose(np.exp(np.asarray(log_var[:, 0, 0, 0], np.float64)), expected,
                                   rtol=1e-5)
    # the sampler's form of eq. 15 on its own variances
    np.testing.assert_allclose(ancestral.learned_variance(jnp.float32(-1.0), 0.3, 0.7), 0.3,
                               rtol=1e-6)
    np.testing.assert_allclose(ancestral.learned_variance(jnp.float32(1.0), 0.3, 0.7), 0.7,
                               rtol=1e-6)


def test_vlb_kl_term_matches_the_closed_form_gaussian_kl():
    """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || N(mu(x_t, x0_hat), Sigma)) against numpy's
    log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2, with Ho et al.'s eq. 7 posterior."""
    rng = np.random.default_rng(0)
    shape = (6, 2, 2, 3)
    x0, x_t, x0_hat = (rng.uniform(-1, 1, shape) for _ in range(3))
    v = rng.uniform(-1, 1, shape)
    index = np.array([1, 5, 20, 50, 98, 99])
    betas = np.asarray(COSINE.betas)
    ab = np.cumprod(1 - betas)
    i, prev = index[:, None, None, None], index[:, None, None, None] - 1
    post_var = betas[i] * (1 - ab[prev]) / (1 - ab[i])
    mean = lambda x: (np.sqrt(ab[prev]) * betas[i] * x  # noqa: E731
                      + np.sqrt(1 - betas[i]) * (1 - ab[prev]) * x_t) / (1 - ab[i])
    frac = (v + 1) / 2
    model_var = np.exp(frac * np.log(betas[i]) + (1 - frac) * np.log(post_var))
    s1, s2 = np.sqrt(post_var), np.sqrt(model_var)
    kl = np.log(s2 / s1) + (s1**2 + (mean(x0) - mean(x0_hat)) ** 2) / (2 * s2**2) - 0.5
    tables = vlb.PosteriorTables.from_betas(betas)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    index = jnp.asarray(index, jnp.int32)
    log_var = vlb.model_log_variance(tables, index, "learned", f32(v))
    ours = vlb.term_nats(tables, f32(x0), f32(x_t), index, f32(x0_hat), log_var)
    np.testing.assert_allclose(ours, kl.reshape(6, -1).sum(-1), rtol=2e-4, atol=2e-4)


def _exact_denoiser(schedule, v):
    """The exact eps of x0 ~ N(0.3, 0.5^2), with a constant variance channel v appended."""

    def denoiser(x_t, t):
        alpha = schedule.alpha(t)[:, None, None, None]
        sigma = schedule.sigma(t)[:, None, None, None]
        x0 = 0.3 + alpha * 0.25 / (alpha**2 * 0.25 + sigma**2) * (x_t - alpha * 0.3)
        eps = (x_t - alpha * x0) / sigma
        return eps if v is None else jnp.concatenate([eps, jnp.full_like(eps, v)], -1)

    return denoiser


@pytest.mark.parametrize("v, fixed", [(1.0, "large"), (-1.0, "small")])
def test_ddpm_with_learned_variance_at_the_ends_is_the_fixed_variance_sampler(v, fixed):
    """Same noise in, same samples out (to float32 accuracy), on a respaced 50-step grid."""
    noise = jax.random.normal(jax.random.PRNGKey(1), (256, 2, 2, 1))

    def draw(denoiser, variance):
        return np.asarray(jax.jit(lambda n: sampling.sample(
            denoiser, LINEAR, "eps", n, jax.random.PRNGKey(2), sampler="ddpm", num_steps=50,
            variance=variance)[0])(noise))

    learned = draw(_exact_denoiser(LINEAR, v), "learned")
    np.testing.assert_allclose(learned, draw(_exact_denoiser(LINEAR, None), fixed), atol=2e-5)


def test_ddpm_learned_variance_without_a_variance_output_is_refused():
    noise = jnp.zeros((2, 2, 2, 1))
    with pytest.raises(ConfigError, match=r"config.sampling.ddpm.variance='learned' needs a "
                                          r"network with a variance output"):
        sampling.sample(_exact_denoiser(LINEAR, None), LINEAR, "eps", noise,
                        jax.random.PRNGKey(0), sampler="ddpm", num_steps=5, variance="learned")


@dataclasses.dataclass(frozen=True)
class _TwoHeads(Network):
    """output = [a0 x + a1 c, tanh(b0 x + b1)]: the mean head's and the variance head's params
    apart, so the gradients of each can be read."""

    x_shape: tuple = (2, 2, 1)
    out_channels: int = 1
    extra_outputs: tuple = (("variance", 1),)

    @staticmethod
    def apply_fn(params, x, c_noise, cond):
        mean = params["a"][0] * x + params["a"][1] * c_noise[:, None, None, None] / 1000
        return jnp.concatenate([mean, jnp.tanh(params["b"][0] * x + params["b"][1])], -1)


def test_l_hybrid_trains_the_variance_only_through_l_vlb_and_leaves_the_mean_gradient():
    """iDDPM Sec. 3.1: L_hybrid = L_simple + lambda L_vlb with a stop-gradient on the mean in
    L_vlb: its gradient on the mean head is L_simple's, and only L_vlb moves the variance head."""
    net = _TwoHeads()
    params = {"network": {"a": jnp.array([0.7, -0.2]), "b": jnp.array([0.3, 0.1])}}
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (16, 2, 2, 1), minval=-1, maxval=1)
    grads, losses = {}, {}
    for weight in (0.0, 0.001):
        objective = Denoising(COSINE, make_parameterization("eps"),
                              DenoisingOptions(vlb_weight=weight), net)
        inputs = objective.prepare(x0, {}, jax.random.PRNGKey(1), 0)
        loss_fn = lambda p, o=objective, i=inputs: o.loss(p, net.apply_fn, i, {}, 0)[0]  # noqa: E731,B023
        losses[weight], grads[weight] = jax.value_and_grad(loss_fn)(params)
    mean_a = lambda g: np.asarray(g["network"]["a"])  # noqa: E731
    np.testing.assert_allclose(mean_a(grads[0.001]), mean_a(grads[0.0]), rtol=1e-6)
    assert np.all(np.asarray(grads[0.0]["network"]["b"]) == 0)
    assert np.all(np.abs(np.asarray(grads[0.001]["network"]["b"])) > 1e-6)
    assert float(losses[0.001]) > float(losses[0.0])


def test_vlb_weight_needs_a_variance_output_and_a_discrete_schedule():
    with pytest.raises(ConfigError, match=r"config.objective.denoising.vlb_weight=0.001 is "
                                          r"invalid: .*learn_sigma=True"):
        check_vlb(0.001, COSINE, dataclasses.replace(_TwoHeads(), extra_outputs=()))
    with pytest.raises(ConfigError, match=r"vlb_weight=0.001 is invalid: .*"
                                          r"config.diffusion.schedule='edm'"):
        check_vlb(0.001, schedules.make_schedule("edm"), _TwoHeads())
    with pytest.raises(ConfigError, match="vlb_weight=-1.0 is invalid"):
        DenoisingOptions(vlb_weight=-1.0)


def test_an_l_hybrid_unet_run_is_scored_by_both_bounds(data_dir, tmp_path):
    """A tiny U-Net with learn_sigma trained 4 steps with L_hybrid; --mode=likelihood's VLB uses
    its learned variance ('auto') and the ODE its prediction, each writing its JSON."""
    from conftest import tiny_config, train_run

    from diffjax.experiment import Experiment
    from diffjax.modes import likelihood

    config = tiny_config(data_dir, **{"model.unet.learn_sigma": True,
                                      "objective.denoising.vlb_weight": 0.001,
                                      "diffusion.linear.num_timesteps": 20,
                                      "likelihood.bound": "vlb",
                                      "likelihood.num_images": 4, "likelihood.batch_size": 4,
                                      "likelihood.split": "train[:4]"})
    workdir = str(tmp_path / "run")
    train_run(config, workdir)
    exp = Experiment(config, workdir, load_data=False)
    assert exp.network.extra_outputs == (("variance", 1),)
    result = likelihood.likelihood_workdir(exp)
    assert result["variance"] == "learned" and result["num_timesteps"] == 20
    assert 0 < result["bits_per_dim"] < 30 and math.isfinite(result["standard_error"])
    total = result["prior_bits_per_dim"] + result["decoder_bits_per_dim"]
    assert result["bits_per_dim"] > total  # plus the 19 KL terms
    config.likelihood.bound = "ode"
    config.likelihood.rtol = config.likelihood.atol = 1e-3
    result = likelihood.likelihood_workdir(Experiment(config, workdir, load_data=False))
    with open(result["path"]) as f:
        saved = json.load(f)
    assert saved["bound"] == "ode" and saved["dequantization"] == "uniform"
    assert saved["nfe"] > 0 and len(saved["per_image"]) == 4 and saved["bits_per_dim"] > 0


@pytest.mark.parametrize("v, fixed", [(1.0, "large"), (-1.0, "small")])
def test_the_generator_samples_a_unet_with_its_learned_variance(data_dir, v, fixed):
    """config.sampling.ddpm.variance='learned' end to end: a learn_sigma U-Net whose variance
    head is the constant v draws, through the Generator, the samples of the fixed-variance
    sampler that v selects (eq. 15's ends), same seed, on a 10-step respaced grid."""
    from conftest import tiny_config

    from diffjax.experiment import Experiment

    config = tiny_config(data_dir, **{"model.unet.learn_sigma": True,
                                      "sampling.num_steps": 10, "sampling.batch_size": 4})
    exp = Experiment(config, "", load_data=False)
    params = exp.network.init(jax.random.PRNGKey(0))
    out = params["conv_out"]
    kernel = 0.3 * jax.random.normal(jax.random.PRNGKey(1), out["kernel"].shape)
    params["conv_out"] = {"kernel": kernel.at[..., 1:].set(0.0),
                          "bias": out["bias"].at[1:].set(v)}

    def draw(variance):
        config.sampling.ddpm.variance = variance
        return Experiment(config, "", load_data=False).generator().sample(params, 4, seed=3)[0]

    learned, reference = draw("learned"), draw(fixed)
    assert np.abs(learned.astype(int) - reference.astype(int)).max() <= 1  # uint8 rounding
    assert np.abs(learned.astype(int) - draw("small" if fixed == "large" else "large")).max() > 8
