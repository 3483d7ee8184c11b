"""Parts defined outside diffjax (tests/helpers/my_plugins.py) are registered by importing their
module and picked by name: a sampler checked against the exact Gaussian ODE solution, an
objective with its own trained group and state checked against its closed-form gradient and
under the NaN guard, a shape-changing codec checked against explicit indexing, and all of them
together from a config file through launch.py."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_launch import launch
from test_reliability import _final_arrays
from test_sampling import EDM, SMALL, exact_sampler_limit, gaussian_denoiser

from diffjax import config_lib, samplers, writers
from diffjax.core import schedules
from diffjax.core.parameterizations import make_parameterization
from diffjax.experiment import Experiment, validate
from diffjax.objectives.denoising import Denoising

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_CONFIG = os.path.join(ROOT, "tests", "helpers", "plugin_config.py")
# Imported as the config file imports it, so that this is the module whose parts are registered.
sys.path.insert(0, os.path.dirname(PLUGIN_CONFIG))
import my_plugins  # noqa: E402


def _plugin_config(data_dir):
    config = config_lib.load_config_file(PLUGIN_CONFIG)
    config.data.data_dir = data_dir
    return config


def _run(sampler, num_steps):
    noise = jax.random.normal(jax.random.PRNGKey(1), SMALL)
    x, nfe = jax.jit(lambda n: samplers.sample(gaussian_denoiser(EDM), EDM, "eps", n,
                                               jax.random.PRNGKey(2), sampler=sampler,
                                               num_steps=num_steps, spacing="karras"))(noise)
    return np.asarray(x), int(nfe)


def test_a_sampler_from_a_users_module_solves_the_ode_at_first_order():
    steps = (16, 32, 64)
    errors = []
    for n in steps:
        x, nfe = _run("ve_euler", n)
        assert nfe == n
        errors.append(np.abs(x - exact_sampler_limit(EDM, SMALL, n, "karras")).max())
        # The same method as diffjax's euler (no churn), written independently.
        np.testing.assert_allclose(x, _run("euler", n)[0], atol=1e-4)
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert slope == pytest.approx(1.0, abs=0.25)


def test_the_objectives_own_group_gets_its_closed_form_gradient():
    """d/dw mean(exp(-u) L + u) = mean((1 - exp(-u_i) L_i) phi_i), u_i = phi_i . w + b."""
    schedule = schedules.make_schedule("linear")
    objective = my_plugins.UncertaintyWeighted(Denoising(schedule, make_parameterization("eps")))
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (6, 4, 4, 1), minval=-1, maxval=1)
    inputs = objective.prepare(x0, {}, jax.random.PRNGKey(1), 0)
    weighting = {"w": jnp.array([0.3, -0.2, 0.1, 0.05]), "b": jnp.asarray(0.4)}

    def apply(params, x, noise_cond, cond):
        return 0.5 * x

    def loss(weighting):
        return objective.loss({"network": None, "weighting": weighting}, apply, inputs, {}, 0)[0]

    grads = jax.grad(loss)(weighting)
    net = lambda x, c: apply(None, x, c, {})  # noqa: E731
    per = np.asarray(objective.base.per_example_loss(net, x0, inputs["t"], inputs["eps"]))
    phi = np.asarray(my_plugins.uncertainty_features(inputs["t"], 4))
    u = phi @ np.asarray(weighting["w"]) + float(weighting["b"])
    np.testing.assert_allclose(grads["w"], np.mean((1 - np.exp(-u) * per)[:, None] * phi, 0),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["b"], np.mean(1 - np.exp(-u) * per), rtol=1e-4, atol=1e-6)


def test_the_nan_guard_and_the_optimizers_cover_the_objectives_group_and_state(data_dir,
                                                                              monkeypatch):
    real_loss = my_plugins.UncertaintyWeighted.loss

    def poisoned(self, params, apply, inputs, state, step):
        loss, metrics = real_loss(self, params, apply, inputs, state, step)
        return loss * jnp.where(step == 1, jnp.nan, 1.0), metrics

    monkeypatch.setattr(my_plugins.UncertaintyWeighted, "loss", poisoned)
    exp = Experiment(_plugin_config(data_dir))
    state = exp.init_state()
    step_fn = exp.train_step_fn()
    history = []
    for k in range(3):
        state, metrics = step_fn(state, exp.global_batch(k))
        history.append((jax.device_get(state.objective), int(metrics["skipped"])))
    assert [skipped for _, skipped in history] == [0, 1, 0]
    assert [int(o.state["applied_steps"]) for o, _ in history] == [1, 1, 2]
    first, second, third = (o for o, _ in history)
    assert np.abs(first.params["weighting"]["w"]).max() > 0  # its own optimizer moved it
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):  # the skipped update
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(second.params["weighting"]["b"], third.params["weighting"]["b"])


def test_a_codec_that_changes_the_shape_of_x_is_exact_space_to_depth():
    codec = my_plugins.SpaceToDepth()
    images = np.random.default_rng(0).uniform(-1, 1, (3, 6, 4, 2)).astype(np.float32)
    assert codec.x_shape((6, 4, 2)) == (3, 2, 8)
    x = np.asarray(codec.encode({}, jnp.asarray(images)))
    np.testing.assert_array_equal(x, my_plugins.space_to_depth_reference(images))
    np.testing.assert_array_equal(np.asarray(codec.decode({}, jnp.asarray(x))), images)


def test_a_bad_key_in_a_users_section_fails_naming_its_fields(data_dir):
    config = _plugin_config(data_dir)
    config.model.tiny_conv.featurez = 3
    with pytest.raises(ValueError, match=r"config.model.tiny_conv has no field 'featurez'; its "
                                         r"fields are: features"):
        validate(config)


def test_parts_from_a_config_files_module_train_sample_and_checkpoint_through_launch(
        data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    train = launch("--workdir", workdir, f"--config={PLUGIN_CONFIG}", data_dir=data_dir)
    assert train.returncode == 0, train.stderr[-3000:]
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert (saved["model"]["name"], saved["codec"]["name"], saved["objective"]["name"]) == (
        "tiny_conv", "space_to_depth", "uncertainty_weighted")
    arrays = _final_arrays(workdir, 3)
    assert int(arrays["objective.state.applied_steps"]) == 3
    assert arrays["objective.params.weighting.w"].shape == (4,)
    assert any(k.startswith("objective.opt_state.weighting") for k in arrays)
    records = writers.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["denoising_loss"]) for r in records)  # the objective's own metric

    sample = launch("--workdir", workdir, "--mode=sample", data_dir=data_dir)
    assert sample.returncode == 0, sample.stderr[-3000:]
    npz = os.path.join(workdir, "samples", "samples_step3_ve_euler4_karras_seed0.npz")
    images = np.load(npz)["images"]
    assert images.shape == (4, 16, 16, 1) and images.dtype == np.uint8  # decoded to images

    inpaint = launch("--workdir", workdir, "--mode=inpaint", data_dir=data_dir)
    assert inpaint.returncode == 2
    assert "config.codec.name='space_to_depth' cannot take inpainting masks" in inpaint.stderr
    assert "Traceback" not in inpaint.stderr


def test_start_up_refuses_what_would_fail_later(data_dir):
    """Rules checked before anything compiles: a validation loss the objective lacks, a grid
    the schedule cannot give, metric counts larger than the samples."""
    config = _plugin_config(data_dir)
    config.data.val_split, config.training.val_every_steps = "train[90%:]", 2
    with pytest.raises(ValueError, match=r"config.training.val_every_steps=2 is invalid: config."
                                         r"objective.name='uncertainty_weighted' has no "
                                         r"validation"):
        validate(config)
    from configs import default

    config = default.get_config()
    config.data.data_dir = data_dir
    config.sampling.num_steps, config.sampling.spacing = 500, "quadratic"
    with pytest.raises(ValueError, match=r"config.sampling.spacing='quadratic' gives repeated "
                                         r"steps for num_steps=500"):
        validate(config)
    config = default.get_config()
    config.data.data_dir, config.eval.num_samples = data_dir, 8
    config.eval.metrics = ("fid", "precision_recall")
    config.eval.precision_recall.k = 8
    with pytest.raises(ValueError, match=r"config.eval.precision_recall.k=8 is invalid: must be < "
                                         r"config.eval.num_samples=8"):
        validate(config)


def test_a_config_is_checked_against_the_devices_it_asks_for_not_this_machines(data_dir):
    from configs import default

    config = default.get_config()  # cpu_devices=4; this process has 8 devices
    config.data.data_dir, config.mesh.shape = data_dir, (2, 2)
    validate(config, devices=False)
    config.mesh.shape = (3, -1)
    with pytest.raises(ValueError, match=r"config.mesh.shape=\(3, -1\) does not fit 4 devices"):
        validate(config, devices=False)


def test_the_loss_and_the_sampler_see_only_the_prediction_channels():
    """A network's extra outputs (after its out_channels) never reach the denoising loss."""
    from diffjax.models import LinenNetwork

    schedule = schedules.make_schedule("linear")
    network = LinenNetwork(module=None, x_shape=(4, 4, 1), out_channels=1,
                           extra_outputs=(("log_variance", 1),))
    with_extra = Denoising(schedule, make_parameterization("eps"), network=network)
    plain = Denoising(schedule, make_parameterization("eps"))
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (4, 4, 4, 1), minval=-1, maxval=1)
    inputs = plain.prepare(x0, {}, jax.random.PRNGKey(1), 0)
    main = lambda p, x, c, cond: 0.5 * x  # noqa: E731
    both = lambda p, x, c, cond: jnp.concatenate([0.5 * x, 100.0 + x], -1)  # noqa: E731
    loss_main = plain.loss({"network": None}, main, inputs, {}, 0)[0]
    assert with_extra.loss({"network": None}, both, inputs, {}, 0)[0] == loss_main
    assert not np.isclose(float(plain.loss({"network": None}, both, inputs, {}, 0)[0]),
                          float(loss_main))  # where the extra channel is not dropped


def test_a_generator_samples_with_the_sampler_its_settings_name(data_dir):
    import dataclasses

    from conftest import tiny_config

    exp = validate(tiny_config(data_dir, **{"sampling.sampler": "ddim", "sampling.num_steps": 3,
                                            "sampling.batch_size": 4}))
    gen = exp.generator(dataclasses.replace(exp.sampling, sampler="heun"))
    assert gen.sampler.name == "heun"
    _, nfe = gen.sample(exp.init_state().params, 4, seed=0)
    assert nfe == 2 * 3 - 1
