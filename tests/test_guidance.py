"""Classifier-free guidance and the Generator: identities of the guided denoiser, then sampling
from a tiny class-conditional U-Net (labels, seeds, sharding)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import samplers as sampling
from diffjax.core import schedules
from diffjax.samplers import guidance

LINEAR = schedules.DiscreteSchedule(tuple(schedules.linear_betas(1000)))
NULL = 10


def _null(labels):
    return jnp.full_like(labels, NULL)
CLASS_MEANS = jnp.linspace(-0.8, 0.8, NULL + 1)  # the null label's "mean" is the last entry


def class_model(x_t, t, labels):
    """An analytic conditional eps-denoiser: x0 | label ~ N(mean[label], 0.25), each label
    (including the null one) a different Gaussian, so cond and uncond outputs differ."""
    alpha, sigma = (f(t)[:, None, None, None] for f in (LINEAR.alpha, LINEAR.sigma))
    mu = CLASS_MEANS[labels][:, None, None, None]
    x0 = mu + alpha * 0.25 / (alpha**2 * 0.25 + sigma**2) * (x_t - alpha * mu)
    return (x_t - alpha * x0) / sigma


def _inputs(batch=6):
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, 3, 3, 1))
    t = jnp.full((batch,), 0.4)
    labels = jnp.arange(batch) % NULL
    return x, t, labels


def test_scale_one_is_the_conditional_and_zero_the_unconditional_model():
    x, t, labels = _inputs()
    cond = class_model(x, t, labels)
    uncond = class_model(x, t, jnp.full_like(labels, NULL))
    assert not np.allclose(cond, uncond)
    for w, expected in [(1.0, cond), (0.0, uncond)]:
        guided = guidance.classifier_free(class_model, labels, _null(labels), w)
        np.testing.assert_array_equal(guided(x, t), expected)


@pytest.mark.parametrize("w", [0.5, 2.0, 7.5])
def test_guided_output_is_uncond_plus_w_times_the_difference(w):
    """Ho & Salimans 2022, eq. 6 (their 1 + w is our w)."""
    x, t, labels = _inputs()
    cond = class_model(x, t, labels)
    uncond = class_model(x, t, jnp.full_like(labels, NULL))
    guided = guidance.classifier_free(class_model, labels, _null(labels), w)(x, t)
    np.testing.assert_allclose(guided, uncond + w * (cond - uncond), rtol=1e-6, atol=1e-6)


def test_guidance_interval_guides_only_inside_the_sigma_range():
    """Kynkaanniemi et al. 2024: guidance where sigma_lo < sigma / alpha <= sigma_hi, the
    conditional model elsewhere; examples with different times in one batch are handled each."""
    x, _, labels = _inputs()
    t = jnp.array([0.05, 0.2, 0.4, 0.6, 0.8, 1.0])
    sigma = np.asarray(LINEAR.sigma(t) / LINEAR.alpha(t))
    lo, hi = float(sigma[1]), float(sigma[3])  # inside: examples 2 and 3 (lo is exclusive)
    w = 3.0
    out = guidance.classifier_free(class_model, labels, _null(labels), w, LINEAR, lo, hi)(x, t)
    cond = class_model(x, t, labels)
    full = guidance.classifier_free(class_model, labels, _null(labels), w)(x, t)
    inside = (sigma > lo) & (sigma <= hi)
    np.testing.assert_array_equal(inside, [False, False, True, True, False, False])
    np.testing.assert_allclose(out[inside], full[inside], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[~inside], cond[~inside])
    # Outside the interval everywhere: the unconditional pass is skipped, output = cond.
    out = guidance.classifier_free(class_model, labels, _null(labels), w, LINEAR, 1e3, 2e3)(x, t)
    np.testing.assert_array_equal(out, cond)


@pytest.mark.parametrize("w", [1.0, 4.0])
def test_guided_sampling_of_gaussian_classes_draws_the_tilted_gaussian(w):
    """Guidance follows the score of p(x_t)^(1 - w) p(x_t | c)^w (Ho & Salimans 2022, eq. 6).
    With classes N(mu_c, s^2) and the null class N(mu_0, s^2), that is at every t the marginal of
    N(mu_0 + w (mu_c - mu_0), s^2) data, so a converged ODE sampler returns its PF-ODE map
    x0 = mu_w + s z with z the noise standardised at the first grid time (then the exact
    denoiser at the last, as every sampler ends)."""
    x, _, labels = _inputs()
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(3), x.shape), np.float64)
    num_steps, s = 50, 0.5
    den = guidance.classifier_free(class_model, labels, _null(labels), w)
    out = jax.jit(lambda n: sampling.sample(den, LINEAR, "eps", n, jax.random.PRNGKey(4),
                                            sampler="dpmpp_2m", num_steps=num_steps)[0])(noise)
    mu0, mu_c = float(CLASS_MEANS[NULL]), np.asarray(CLASS_MEANS)[np.asarray(labels)]
    mu = (mu0 + w * (mu_c - mu0))[:, None, None, None]
    ts = sampling.time_grid(LINEAR, num_steps, "uniform")
    (a0, s0), (a, sg) = [(float(LINEAR.alpha(t)), float(LINEAR.sigma(t))) for t in (ts[0], ts[-1])]
    x_last = a * mu + np.sqrt(a**2 * s**2 + sg**2) * (noise - a0 * mu) / np.sqrt(a0**2 * s**2
                                                                                  + s0**2)
    expected = mu + a * s**2 / (a**2 * s**2 + sg**2) * (x_last - a * mu)
    np.testing.assert_allclose(out, expected, atol=0.02)  # dpmpp_2m at 50 steps: 0.005


# ---------------------------------------------------------------------------------------------
# The Generator on a tiny class-conditional U-Net (untrained: only identities are checked).


@pytest.fixture(scope="module")
def conditional_setup(data_dir):
    """A tiny class-conditional U-Net whose params are perturbed from their init, since the init
    zeroes the output layer (every label would give the same, zero, output)."""
    from conftest import tiny_config

    from diffjax.experiment import Experiment

    config = tiny_config(data_dir, **{"conditioning.name": "class_label",
                                      "conditioning.class_label.dropout": 0.1,
                                      "sampling.sampler": "ddim", "sampling.num_steps": 2})
    exp = Experiment(config, load_data=False)
    params = exp.init_state().ema[0]
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
    params = treedef.unflatten([p + 0.05 * jax.random.normal(k, p.shape)
                                for p, k in zip(leaves, keys)])
    return config, exp, params


def _generator(exp, config, params, num_devices=1):
    from diffjax import parallel
    from diffjax.experiment import Experiment

    config = config.copy_and_resolve_references()
    config.mesh.num_devices = num_devices
    gen = Experiment(config, load_data=False).generator()
    return gen, jax.device_put(params, parallel.replicated(gen.mesh))


def test_generator_labels_seeds_and_sharding(conditional_setup):
    config, exp, params = conditional_setup
    config.sampling.labels = (3, 7)
    gen, p1 = _generator(exp, config, params)
    np.testing.assert_array_equal(gen.labels_for(5), [3, 7, 3, 7, 3])
    a, nfe = gen.sample(p1, 8, seed=0)
    assert nfe == 2 and a.shape == (8, 16, 16, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(gen.sample(p1, 8, seed=0)[0], a)  # reproducible from the seed
    assert not np.array_equal(gen.sample(p1, 8, seed=1)[0], a)
    assert not np.array_equal(gen.sample(p1, 8, seed=0, labels=np.ones(8))[0], a)  # conditional
    # The same seed on 4 devices (2 images each) gives the same images: the noise is drawn by
    # the partitionable threefry, whatever the sharding. XLA may order float sums differently per
    # shard, so allow one uint8 level.
    gen4, p4 = _generator(exp, config, params, num_devices=4)
    assert np.abs(gen4.sample(p4, 8, seed=0)[0].astype(int) - a.astype(int)).max() <= 1


def test_generator_scale_zero_samples_the_null_label(conditional_setup):
    config, exp, params = conditional_setup
    config.sampling.labels = (3,)
    config.sampling.guidance_scale = 1.0
    gen, p1 = _generator(exp, config, params)
    null = gen.sample(p1, 8, seed=0, labels=np.full(8, NULL))[0]  # the null label, conditionally
    assert not np.array_equal(gen.sample(p1, 8, seed=0)[0], null)
    config.sampling.guidance_scale = 0.0
    np.testing.assert_array_equal(_generator(exp, config, params)[0].sample(p1, 8, seed=0)[0],
                                  null)
    config.sampling.guidance_scale = 1.0


def test_guidance_on_an_unconditional_model_is_rejected(data_dir):
    from conftest import tiny_config

    from diffjax.experiment import validate

    config = tiny_config(data_dir, **{"sampling.guidance_scale": 2.0})
    with pytest.raises(ValueError, match=r"config.sampling.guidance_scale=2.0 is invalid: guidance "
                                         r"needs a conditioning with a null condition"):
        validate(config)
    config = tiny_config(data_dir, **{"conditioning.name": "class_label",
                                      "sampling.labels": (12,)})
    with pytest.raises(ValueError, match=r"config.sampling.labels=\(12,\) is invalid: labels must "
                                         r"be in \[0, 10\)"):
        validate(config)


def test_guidance_on_the_first_channels_only_as_dit_and_sit_sample():
    """channels=1 of 2: channel 0 is uncond + w (cond - uncond), channel 1 stays conditional."""
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 2))
    t, labels = jnp.full((4,), 0.4), jnp.arange(4)
    guided = guidance.classifier_free(class_model, labels, _null(labels), 4.0, channels=1)(x, t)
    cond, uncond = class_model(x, t, labels), class_model(x, t, _null(labels))
    np.testing.assert_allclose(guided[..., 0], uncond[..., 0] + 4.0 * (cond[..., 0] -
                                                                        uncond[..., 0]), rtol=1e-5)
    np.testing.assert_allclose(guided[..., 1], cond[..., 1], rtol=1e-6)
    assert not np.allclose(guided[..., 1], uncond[..., 1] + 4.0 * (cond[..., 1] - uncond[..., 1]))
