"""DDGAN: the sampler with the exact conditional generator of Gaussian data against the data
distribution, the losses and their gradient split against closed forms with a linear
discriminator, the latent input of the U-Net, a short run through launch, and the clear
errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config, train_run

from diffjax.core import ddgan as dg
from diffjax.core import schedules
from diffjax.core.parameterizations import make_parameterization
from diffjax.errors import ConfigError
from diffjax.models.network import NetworkSpec
from diffjax.models.unet import UNetOptions, build_unet
from diffjax.objectives import ObjectiveContext, make_objective
from diffjax.objectives.ddgan import DDGANOptions
from diffjax.samplers import sample

VP = schedules.make_schedule("vp_linear")
MU, S = 0.3, 0.4  # x0 ~ N(MU, S^2) per pixel
SHAPE = (4, 4, 1)
DIM = 16  # the latent has one entry per pixel, so a generator can draw x0 | x_t exactly


def exact_generator(x_t, t, r=None):
    """x0 ~ p(x0 | x_t) of N(MU, S^2) data, its noise the latent r: posterior variance
    v = 1 / (1 / S^2 + alpha^2 / sigma^2), mean v (MU / S^2 + alpha x_t / sigma^2)."""
    alpha = VP.alpha(t).reshape(-1, 1, 1, 1)
    sigma = VP.sigma(t).reshape(-1, 1, 1, 1)
    var = 1.0 / (1.0 / S**2 + alpha**2 / sigma**2)
    mean = var * (MU / S**2 + alpha * x_t / sigma**2)
    z = jnp.zeros((x_t.shape[0], DIM)) if r is None else r
    return mean + jnp.sqrt(var) * z.reshape(x_t.shape)


@pytest.mark.parametrize("num_steps", [1, 2, 4])
def test_the_sampler_with_the_exact_conditional_generator_draws_the_data_distribution(
        num_steps):
    """Each step x0 ~ p(x0 | x_t), then x_s ~ q(x_s | x_t, x0), is an exact draw from
    p(x_s | x_t), so T steps from x_1 end in N(MU, S^2). Without the latent (z = 0, the posterior
    mean) the samples are too narrow: the test sees the latent."""
    xlat = make_parameterization("x0_latent", latent_dim=DIM)
    noise = jax.random.normal(jax.random.PRNGKey(0), (8192, *SHAPE))
    x, nfe = sample(exact_generator, VP, xlat, noise, jax.random.PRNGKey(1), sampler="ddgan",
                    num_steps=num_steps)
    assert nfe == num_steps
    assert abs(float(jnp.mean(x)) - MU) < 0.01
    assert abs(float(jnp.std(x)) / S - 1.0) < 0.02

    def mean_only(x_t, t, r=None):
        return exact_generator(x_t, t, None)

    x0, _ = sample(mean_only, VP, xlat, noise, jax.random.PRNGKey(1), sampler="ddgan",
                   num_steps=num_steps)
    assert float(jnp.std(x0)) < 0.9 * S


def test_pairs_follow_the_forward_process():
    """The real pair: x_{k-1} ~ q(x_{k-1} | x0) and x_k = one forward step from it has the
    marginal q(x_k | x0): mean alpha_k x0, std sigma_k (closed form)."""
    x0 = jnp.full((20000, 1, 1, 1), 0.7)
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    t_s, t_t = jnp.float32(0.5), jnp.float32(1.0)
    x_s = VP.alpha(t_s) * x0 + VP.sigma(t_s) * jax.random.normal(k1, x0.shape)
    x_t = dg.forward_step(x_s, jax.random.normal(k2, x0.shape), VP.alpha(t_s), VP.sigma(t_s),
                          VP.alpha(t_t), VP.sigma(t_t))
    assert abs(float(jnp.mean(x_t)) - 0.7 * float(VP.alpha(t_t))) < 0.02
    assert abs(float(jnp.std(x_t)) - float(VP.sigma(t_t))) < 0.01


class LinearDiscriminator:
    """D(a, x_t, t) = sum(w a) + c: its R1 gradient is w and its logits are closed forms."""

    def init(self, rng, a, x_t, t):
        return {"params": {"w": 0.3 * jax.random.normal(rng, a.shape[1:]), "c": jnp.zeros(())}}

    def apply(self, variables, a, x_t, t):
        p = variables["params"]
        return jnp.sum(a * p["w"], axis=(1, 2, 3)) + p["c"]


def test_the_losses_and_their_gradients_match_closed_forms():
    """With a linear D and a generator x0 = b (a constant image): D's loss is
    softplus(-D(real)) + softplus(D(fake)) and R1 = ||w||^2, D's gradient in w is
    mean(-sigmoid(-D_r) a_r + sigmoid(D_f) a_f) + gamma w (the fake held fixed), and G's gradient
    in b is mean(-sigmoid(-D_f) c_x0 w): no D loss reaches G, no G loss reaches D."""
    gamma = 0.5
    xlat = make_parameterization("x0_latent", latent_dim=DIM)
    obj = make_objective("ddgan", DDGANOptions(num_steps=2, r1_gamma=gamma),
                         ObjectiveContext(VP, xlat, x_shape=SHAPE))
    obj = obj.__class__(VP, xlat, LinearDiscriminator(), SHAPE, None, obj.options)
    x = MU + S * jax.random.normal(jax.random.PRNGKey(5), (32, *SHAPE))
    inputs = obj.prepare(x, {}, jax.random.PRNGKey(6), 0)
    d_params = obj.init_params(jax.random.PRNGKey(7), None)["discriminator"]
    b = 0.1 * jax.random.normal(jax.random.PRNGKey(8), SHAPE)

    def apply(p, x_in, c_noise, cond):
        return jnp.broadcast_to(p, x_in.shape)

    params = {"network": b, "discriminator": d_params}
    loss, metrics = obj.loss(params, apply, inputs, {}, 0)
    grads = jax.grad(lambda p: obj.loss(p, apply, inputs, {}, 0)[0])(params)

    # closed forms, in numpy
    levels = np.linspace(0.0, 1.0, 3)
    k = np.asarray(inputs["k"])
    t, s = levels[k], levels[k - 1]
    a_t, s_t = np.asarray(VP.alpha(t)), np.asarray(VP.sigma(t))
    a_s = np.where(s == 0, 1.0, np.asarray(VP.alpha(s)))
    s_s = np.where(s == 0, 0.0, np.asarray(VP.sigma(s)))
    b4 = lambda c: c.reshape(-1, 1, 1, 1)  # noqa: E731
    xn, bn = np.asarray(x, np.float64), np.asarray(b, np.float64)
    real = b4(a_s) * xn + b4(s_s) * np.asarray(inputs["eps_prev"])
    ratio = a_t / a_s
    x_t = b4(ratio) * real + b4(np.sqrt(s_t**2 - ratio**2 * s_s**2)) * np.asarray(
        inputs["eps_step"])
    var_ts = s_t**2 - ratio**2 * s_s**2
    c_xt, c_x0 = ratio * s_s**2 / s_t**2, a_s * var_ts / s_t**2
    std = np.sqrt(var_ts * s_s**2 / s_t**2)
    fake = b4(c_xt) * x_t + b4(c_x0) * bn + b4(std) * np.asarray(inputs["eps_post"])
    w, c = np.asarray(d_params["w"], np.float64), float(d_params["c"])
    d_r = np.sum(real * w, axis=(1, 2, 3)) + c
    d_f = np.sum(fake * w, axis=(1, 2, 3)) + c
    softplus = lambda v: np.logaddexp(0.0, v)  # noqa: E731
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    np.testing.assert_allclose(metrics["d_loss"], np.mean(softplus(-d_r) + softplus(d_f)),
                               rtol=1e-4)
    np.testing.assert_allclose(metrics["g_loss"], np.mean(softplus(-d_f)), rtol=1e-4)
    np.testing.assert_allclose(metrics["r1"], np.sum(w**2), rtol=1e-4)
    grad_w = (np.mean(-b4(sigmoid(-d_r)) * real + b4(sigmoid(d_f)) * fake, axis=0)
              + gamma * w)
    np.testing.assert_allclose(grads["discriminator"]["w"], grad_w, rtol=1e-3, atol=1e-6)
    grad_b = np.mean(-b4(sigmoid(-d_f) * c_x0) * w[None], axis=0)
    np.testing.assert_allclose(grads["network"], grad_b, rtol=1e-3, atol=1e-6)
    assert np.isfinite(float(loss))


def test_the_unet_embeds_the_latent_with_its_own_mlp():
    """A latent noise input [B, D] gets a Dense from D (no sinusoid) beside the time embedding,
    and the output depends on it."""
    net = build_unet(UNetOptions(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                                 use_scale_shift_norm=True),
                     NetworkSpec((8, 8, 1), num_noise_inputs=2, latent_dim=DIM))
    params = net.init(jax.random.PRNGKey(0))
    assert params["temb1_dense0"]["kernel"].shape == (DIM, 128)
    assert params["temb_dense0"]["kernel"].shape == (32, 128)
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1),
                                                                 p.shape), params)
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 1))
    c = jnp.full((2,), 500.0)
    z1, z2 = jax.random.normal(jax.random.PRNGKey(3), (2, 2, DIM))
    out1 = net.apply(params, x, (c, z1), {})
    out2 = net.apply(params, x, (c, z2), {})
    assert float(jnp.mean(jnp.abs(out1 - out2))) > 1e-3 * float(jnp.mean(jnp.abs(out1)))


DDGAN_CONFIG = {"diffusion.schedule": "vp_linear", "diffusion.parameterization": "x0_latent",
                "diffusion.latent_dim": 8, "objective.name": "ddgan",
                "objective.ddgan.num_steps": 2, "objective.ddgan.disc_channels": 8,
                "objective.ddgan.disc_layers": 2, "sampling.sampler": "ddgan",
                "sampling.num_steps": 2}


def test_ddgan_trains_resumes_bit_exactly_and_samples(data_dir, tmp_path):
    """2 steps straight == 1, restart, 1 more, with the discriminator a trained group (its
    params moved and its Adam state resumed with the rest); sampling draws images in the trained
    T steps."""
    from diffjax.experiment import Experiment

    config = tiny_config(data_dir, **DDGAN_CONFIG, **{"training.num_steps": 2,
                                                      "training.checkpoint_every_steps": 1})
    exp = Experiment(config, str(tmp_path / "straight"))
    d0 = exp.init_state().objective.params["discriminator"]
    straight = train_run(config, str(tmp_path / "straight"))
    config.training.num_steps = 1
    train_run(config, str(tmp_path / "resumed"))
    config.training.num_steps = 2
    resumed = train_run(config, str(tmp_path / "resumed"))
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    d1 = straight.objective.params["discriminator"]
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), d0, d1))
    assert min(moved) > 0 and set(straight.objective.opt_state) == {"discriminator"}
    images, nfe = exp.generator().sample(straight.params, 4, seed=0)
    assert images.shape == (4, 16, 16, 1) and images.dtype == np.uint8 and nfe == 2


def test_bad_ddgan_settings_fail_clearly(data_dir):
    from diffjax.experiment import Experiment

    with pytest.raises(ConfigError, match="sampler='ddgan' samples latent generators.*"
                                          "parameterization is 'eps'"):
        Experiment(tiny_config(data_dir, **{"sampling.sampler": "ddgan"}))
    with pytest.raises(ConfigError, match="parameterization must be 'x0_latent', not 'x0'"):
        Experiment(tiny_config(data_dir, **{**DDGAN_CONFIG, "diffusion.parameterization":
                                            "x0"}))
    with pytest.raises(ConfigError, match="'ddgan' needs a continuous schedule"):
        Experiment(tiny_config(data_dir, **{**DDGAN_CONFIG, "diffusion.schedule": "linear"}))
    with pytest.raises(ConfigError, match="trained for 2 denoising steps.*num_steps=2"):
        Experiment(tiny_config(data_dir, **{**DDGAN_CONFIG, "sampling.num_steps": 4}))
    with pytest.raises(ConfigError, match="sampler='ddim' with num_steps=2"):
        Experiment(tiny_config(data_dir, **{**DDGAN_CONFIG, "sampling.sampler": "ddim"}))
    with pytest.raises(ConfigError, match="latent_dim=0 is invalid"):
        Experiment(tiny_config(data_dir, **{**DDGAN_CONFIG, "diffusion.latent_dim": 0}))
