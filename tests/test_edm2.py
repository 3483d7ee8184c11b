"""EDM2 (Karras et al. 2024): the magnitude-preserving layers keep unit magnitude, forced weight
normalisation, the U-Net's sizes against EDM2 Table 2, the loss with learned uncertainty against
its closed form (eq. 21) and its optimum, the learning-rate schedule against EDM2's code, and a
few training steps of the digits recipe."""

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, run_steps

from diffjax.core.parameterizations import make_parameterization
from diffjax.core.schedules import make_schedule
from diffjax.models import NetworkSpec, count_params, make_network
from diffjax.models.edm2 import (
    EDM2Options,
    MPConv,
    fourier_constants,
    mp_cat,
    mp_fourier,
    mp_silu,
    mp_sum,
    mp_weight,
    normalize,
)
from diffjax.objectives import ObjectiveContext, make_objective
from diffjax.objectives.edm2 import EDM2LossOptions, edm2_learning_rate, uncertainty_loss

SAMPLES = 1 << 20


def _assert_unit_second_moment(y, extra_tol: float = 0.0):
    """E[y^2] = 1 within 5 standard errors of the sample mean of y^2 (plus extra_tol)."""
    sq = np.asarray(y, np.float64).ravel() ** 2
    stderr = sq.std() / np.sqrt(sq.size)
    assert abs(sq.mean() - 1.0) <= 5 * stderr + extra_tol, (sq.mean(), stderr)


def _normal(seed, shape):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def test_mp_silu_sum_and_cat_preserve_unit_magnitude():
    """EDM2 eqs. 81, 88, 103 on independent N(0, 1) inputs, 2^20 values each: standard error of
    E[y^2] ~ sqrt(2 / 2^20) = 0.0014, so 5 of them is ~0.007; mp_silu's 0.596 is rounded to 3
    digits, worth 2 * 0.0005 / 0.596 = 0.0017 more."""
    a, b = _normal(0, (SAMPLES,)), _normal(1, (SAMPLES,))
    _assert_unit_second_moment(mp_silu(a), extra_tol=0.0017)
    for t in (0.3, 0.5, 0.8):
        _assert_unit_second_moment(mp_sum(a, b, t))
    for t in (0.3, 0.5):
        cat = mp_cat(a.reshape(-1, 64), _normal(2, (SAMPLES // 64, 192)), axis=-1, t=t)
        _assert_unit_second_moment(cat)


def test_mp_fourier_features_have_unit_magnitude():
    """sqrt(2) cos(2 pi f x + phi) over random phases: 2^16 channels x 16 inputs."""
    freqs, phases = fourier_constants(1 << 16, seed=3)
    _assert_unit_second_moment(mp_fourier(_normal(4, (16,)), freqs, phases))


def test_mp_conv_with_random_weights_preserves_unit_magnitude():
    """Dense and 3x3 MPConv (interior pixels: the zero padding lowers the border) at any stored
    weight scale; output channels share inputs, so the standard error is taken per channel:
    5 sqrt(2 / B)."""
    module = MPConv(64)
    x = _normal(5, (1 << 16, 64))
    params = module.init(jax.random.PRNGKey(6), x)
    params = jax.tree.map(lambda w: 3.0 * w + 0.5 * _normal(7, w.shape), params)
    y = np.asarray(module.apply(params, x), np.float64)
    assert abs((y**2).mean() - 1) < 5 * np.sqrt(2 / x.shape[0])
    conv = MPConv(32, (3, 3))
    images = _normal(8, (64, 34, 34, 48))
    params = conv.init(jax.random.PRNGKey(9), images)
    y = np.asarray(conv.apply(params, images), np.float64)[:, 1:-1, 1:-1]
    assert abs((y**2).mean() - 1) < 5 * np.sqrt(2 / (64 * 32 * 32))


def test_forced_weight_normalisation_makes_the_stored_scale_irrelevant():
    """EDM2 eqs. 47 and 66: the effective weight has unit norm per output channel whatever the
    stored scale, so scaling the stored weight by 7 leaves the output unchanged (up to the 1e-4
    eps of normalize)."""
    weight = _normal(10, (3, 3, 16, 8)) * jnp.arange(1, 9)
    norms = np.linalg.norm(np.asarray(mp_weight(weight)).reshape(-1, 8), axis=0)
    # normalize divides by eps + rms: 1 - norm = eps / rms ~ 1.1e-4 for the rms ~0.9 channel
    np.testing.assert_allclose(norms, 1.0, rtol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(mp_weight(weight, 0.3)).reshape(-1, 8),
                                              axis=0), 0.3, rtol=2e-4)
    conv = MPConv(8, (3, 3))
    x = _normal(11, (2, 8, 8, 16))
    out = conv.apply({"params": {"weight": weight}}, x)
    out7 = conv.apply({"params": {"weight": 7.0 * weight}}, x)
    np.testing.assert_allclose(out7, out, rtol=2e-4, atol=2e-5)


def _tiny_edm2(num_classes=0, **options):
    defaults = dict(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                    channels_per_head=16)
    return make_network("edm2", EDM2Options(**{**defaults, **options}),
                        NetworkSpec((8, 8, 3), num_classes))


def test_project_params_normalises_weights_and_keeps_the_function():
    """The network's project_params (the train step's forced normalisation) leaves every stored
    MPConv weight at unit rms per output channel, the gains as they were, and the output the
    same."""
    net = _tiny_edm2()
    params = net.init(jax.random.PRNGKey(0))
    params = jax.tree.map(lambda p: 2.5 * p + (0.5 if p.ndim == 0 else 0.0), params)
    projected = net.project_params(params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(projected):
        if leaf.ndim >= 2:
            rms = np.sqrt(np.mean(np.asarray(leaf).reshape(-1, leaf.shape[-1]) ** 2, axis=0))
            np.testing.assert_allclose(rms, 1.0, rtol=2e-4, err_msg=jax.tree_util.keystr(path))
        else:
            assert float(leaf) == 0.5
    x, c_noise = _normal(1, (2, 8, 8, 3)), jnp.array([-0.5, 0.7])
    # normalize's eps 1e-4 weighs 1e-4 (1 - 1 / 2.5) more after projection, in each of the ~20
    # MPConvs in series: ~1e-3 of the output's rms 0.4
    np.testing.assert_allclose(net.apply(projected, x, c_noise, {}),
                               net.apply(params, x, c_noise, {}), rtol=1e-3, atol=1e-3)


def test_the_output_is_zero_at_init_and_the_null_label_is_the_zero_one_hot():
    """out_gain starts at 0 (EDM2's UNet), so F = 0 at init; the null label num_classes embeds
    as EDM2's unconditional zero vector: the output does not depend on emb_label's weights."""
    net = _tiny_edm2(num_classes=10)
    params = net.init(jax.random.PRNGKey(0))
    x, c_noise = _normal(1, (2, 8, 8, 3)), jnp.array([-0.5, 0.7])
    null = {"label": jnp.array([10, 10])}
    assert float(jnp.abs(net.apply(params, x, c_noise, null)).max()) == 0.0
    params = jax.tree.map(lambda p: p + 1.0 if p.ndim == 0 else p, params)  # all gains 1
    other = jax.tree.map(lambda p: p, params)
    other["emb_label"] = {"weight": _normal(2, params["emb_label"]["weight"].shape)}
    np.testing.assert_array_equal(net.apply(params, x, c_noise, null),
                                  net.apply(other, x, c_noise, null))
    real = {"label": jnp.array([3, 7])}
    assert not np.allclose(net.apply(params, x, c_noise, real), net.apply(other, x, c_noise, real))


def edm2_unet_params(img_resolution, img_channels, label_dim, model_channels,
                     channel_mult=(1, 2, 3, 4), num_blocks=3, attn_resolutions=(16, 8)):
    """The trained parameters of NVlabs/edm2 networks_edm2.UNet, from its constructor's shapes
    (MPConv weights [out, in, *kernel], one emb_gain per Block, out_gain), written out apart from
    our module."""
    cblock = [model_channels * m for m in channel_mult]
    cnoise, cemb = cblock[0], max(cblock)

    def block(cin, cout, flavor, attention=False):
        n = 1 + (cout if flavor == "enc" else cin) * cout * 9 + cemb * cout + cout * cout * 9
        n += cin * cout if cin != cout else 0
        n += (3 * cout * cout + cout * cout) if attention else 0
        return n

    total = 1 + cnoise * cemb + label_dim * cemb
    enc_out, cout = [], img_channels + 1
    for level, channels in enumerate(cblock):
        res = img_resolution >> level
        if level == 0:
            total += cout * channels * 9
            cout = channels
        else:
            total += block(cout, cout, "enc")
        enc_out.append(cout)
        for _ in range(num_blocks):
            total += block(cout, channels, "enc", res in attn_resolutions)
            cout = channels
            enc_out.append(cout)
    for level, channels in reversed(list(enumerate(cblock))):
        res = img_resolution >> level
        if level == len(cblock) - 1:
            total += block(cout, cout, "dec", True) + block(cout, cout, "dec")
        else:
            total += block(cout, cout, "dec")
        for _ in range(num_blocks + 1):
            total += block(cout + enc_out.pop(), channels, "dec", res in attn_resolutions)
            cout = channels
    return total + cout * img_channels * 9


# EDM2 Table 2 (ImageNet-512, 64x64x4 latents, 1000 classes), in millions.
EDM2_TABLE_2 = {"xs": 125, "s": 280, "m": 498, "l": 777, "xl": 1119, "xxl": 1523}


@pytest.mark.parametrize("preset", list(EDM2_TABLE_2))
def test_parameter_counts_match_edm2_table_2(preset):
    net = make_network("edm2", EDM2Options(preset=preset), NetworkSpec((64, 64, 4), 1000))
    ours = count_params(jax.eval_shape(net.init, jax.random.PRNGKey(0)))
    channels = {"xs": 128, "s": 192, "m": 256, "l": 320, "xl": 384, "xxl": 448}[preset]
    assert ours == edm2_unet_params(64, 4, 1000, channels)
    # Precond adds the uncertainty head's 128 weights (here the objective's); with or without
    # them the count rounds to the published millions and is within 0.5% of them.
    published = EDM2_TABLE_2[preset] * 1e6
    for count in (ours, ours + 128):
        assert round(count / 1e6) == EDM2_TABLE_2[preset], count
        assert abs(count - published) <= 0.005 * published


def _objective(**options):
    schedule = make_schedule("edm")
    param = make_parameterization("edm", sigma_data=0.5)
    ctx = ObjectiveContext(schedule=schedule, parameterization=param, x_shape=(4, 4, 1))
    return make_objective("edm2", EDM2LossOptions(**options), ctx), schedule


def _linear_net(params, x, noise_cond, cond):
    """A stand-in F: params * x + 0.1 c_noise."""
    return params * x + 0.1 * noise_cond[:, None, None, None]


def test_edm2_loss_equals_eq_21_written_as_edm2_code():
    """EDM2Loss.__call__ and Precond.forward transcribed with numpy: sigma = exp of the drawn
    ln sigma, D = c_skip y + c_out F(c_in y, ln(sigma) / 4) with y = x + sigma n, u from the head
    (MP Fourier of c_noise -> normalised weight / sqrt(128)), per example the mean over pixels
    of weight / e^u (D - x)^2 + u."""
    objective, schedule = _objective()
    x = np.asarray(_normal(0, (6, 4, 4, 1))) * 0.5
    inputs = objective.prepare(jnp.asarray(x), {}, jax.random.PRNGKey(1), 0)
    groups = objective.init_params(jax.random.PRNGKey(2), None)
    loss, metrics = objective.loss({"network": 0.7, **groups}, _linear_net, inputs, {}, 0)

    sigma = np.asarray(schedule.sigma(inputs["t"]), np.float64)[:, None, None, None]
    noise = np.asarray(inputs["eps"], np.float64) * sigma
    sd = 0.5
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / np.sqrt(sigma**2 + sd**2)
    c_in = 1 / np.sqrt(sd**2 + sigma**2)
    c_noise = np.log(sigma.ravel()) / 4
    y = x + noise
    f_x = 0.7 * c_in * y + 0.1 * c_noise[:, None, None, None]
    denoised = c_skip * y + c_out * f_x
    freqs, phases = fourier_constants(128, seed=1)
    features = np.sqrt(2) * np.cos(np.outer(c_noise, freqs) + phases)
    w = np.asarray(groups["logvar"]["logvar_linear"]["weight"], np.float64)[:, 0]
    w = w / (1e-4 + np.linalg.norm(w) / np.sqrt(128))
    logvar = (features @ (w / np.sqrt(128)))[:, None, None, None]
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    expected = np.mean(weight / np.exp(logvar) * (denoised - x) ** 2 + logvar)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["logvar"]), logvar.mean(), rtol=1e-5, atol=1e-6)


def test_the_optimal_uncertainty_is_the_log_of_the_weighted_error():
    """e e^-u + u is least at u* = ln e (d/du = 1 - e e^-u = 0), where it is 1 + ln e. The
    closed form: the gradient vanishes at ln e. Through the objective: with every example at one
    noise level and the network fixed, training only the logvar group drives u to
    ln(mean weighted error) and the loss to 1 + ln of it."""
    for e in (0.03, 1.0, 40.0):
        grad = jax.grad(lambda u: uncertainty_loss(e, u))(jnp.log(e))
        assert abs(float(grad)) < 1e-6
        assert float(uncertainty_loss(e, jnp.log(e))) == pytest.approx(1 + math.log(e))
    objective, _ = _objective(logvar_ref_steps=50)  # decaying lr: Adam settles at u*
    inputs = objective.prepare(_normal(0, (16, 4, 4, 1)), {}, jax.random.PRNGKey(1), 0)
    inputs["t"] = jnp.full((16,), 0.6)
    groups = objective.init_params(jax.random.PRNGKey(2), None)

    def loss(logvar_params):
        return objective.loss({"network": 0.3, "logvar": logvar_params}, _linear_net, inputs,
                              {}, 0)

    tx = objective.optimizers()["logvar"]
    params, opt = groups["logvar"], tx.init(groups["logvar"])

    @jax.jit
    def step(params, opt):
        grads = jax.grad(lambda p: loss(p)[0])(params)
        updates, opt = tx.update(grads, opt, params)
        return jax.tree.map(jnp.add, params, updates), opt

    for _ in range(1500):
        params, opt = step(params, opt)
    value, metrics = loss(params)
    error = float(metrics["weighted_mse"])
    assert float(metrics["logvar"]) == pytest.approx(math.log(error), abs=2e-3)
    assert float(value) == pytest.approx(1 + math.log(error), abs=1e-5)


def test_rsqrt_learning_rate_is_edm2s_schedule():
    """training_loop.learning_rate_schedule(cur_nimg, batch_size, ref_lr, ref_batches,
    rampup_Mimg) with cur_nimg = step * batch_size, and optim.decay='rsqrt' the same."""
    from diffjax import settings
    from diffjax.training import optim

    def edm2(cur_nimg, batch_size, ref_lr, ref_batches, rampup_mimg):
        lr = ref_lr
        if ref_batches > 0:
            lr /= np.sqrt(max(cur_nimg / (ref_batches * batch_size), 1))
        if rampup_mimg > 0:
            lr *= min(cur_nimg / (rampup_mimg * 1e6), 1)
        return lr

    ours = edm2_learning_rate(0.012, 70_000, 4_883)
    options = settings.OptimOptions(lr=0.012, decay="rsqrt", ref_steps=70_000, warmup_steps=4_883)
    schedule = optim.learning_rate_schedule(options, 1_048_576)
    for step in (0, 1, 2_000, 4_883, 10_000, 70_000, 280_000, 1_048_575):
        # 10 Mimg / 2048 = 4882.8 steps: our ramp rounds it to 4,883.
        expected = edm2(step * 2048, 2048, 0.012, 70_000, 4_883 * 2048 / 1e6)
        assert float(ours(step)) == pytest.approx(expected, rel=1e-6, abs=1e-12)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-6, abs=1e-12)


def _recipe(name):
    spec = importlib.util.spec_from_file_location(f"_edm2_{name}",
                                                  os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_the_digits_recipe_trains_with_finite_loss_and_normalised_weights(data_dir):
    """configs/mnist_edm2.py, 3 steps of 8: finite losses, and after them every stored MPConv
    weight at unit rms per output channel (the train step's forced normalisation)."""
    config = _recipe("mnist_edm2")
    config.data.data_dir = data_dir
    config.training.batch_size = 8
    config.optim.warmup_steps = 1
    config.mesh.num_devices, config.mesh.cpu_devices = 1, 0
    _, state, losses = run_steps(config, 3)
    assert np.all(np.isfinite(losses)), losses
    for leaf in jax.tree.leaves(state.params):
        if leaf.ndim >= 2:
            rms = np.sqrt(np.mean(np.asarray(leaf).reshape(-1, leaf.shape[-1]) ** 2, axis=0))
            np.testing.assert_allclose(rms, 1.0, rtol=2e-4)
    assert int(state.step) == 3


def test_the_imagenet512_xs_recipe_is_edm2_xs():
    from diffjax.experiment import validate

    config = _recipe("imagenet512_edm2_xs")
    exp = validate(config)
    assert exp.num_params() == edm2_unet_params(64, 4, 1000, 128) == 124_713_125
    o = config.optim
    assert (o.lr, o.b1, o.b2, o.decay, o.ref_steps, o.grad_clip) == (
        0.012, 0.9, 0.99, "rsqrt", 70_000, 0.0)
    assert config.training.batch_size * config.training.num_steps == 2048 << 20


def test_normalize_is_per_slice_unit_rms():
    """Each slice over `axis` at unit rms, whatever its scale (less eps / rms: 1e-4 / 0.5)."""
    x = _normal(0, (5, 7, 3)) * jnp.array([0.5, 3.0, 30.0])
    rms = np.sqrt(np.mean(np.asarray(normalize(x, axis=(0, 1))) ** 2, axis=(0, 1)))
    np.testing.assert_allclose(rms, 1.0, rtol=3e-4)
