"""Training knobs: several EMA rates, the noise-level curriculum, the validation loss at a fixed
grid of noise levels, and checkpoint/EMA ensembles at sampling time."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from diffjax import checkpoint, config_lib, generate, losses, schedules, train, writers

LINEAR = schedules.DiscreteSchedule(tuple(schedules.linear_betas(1000)))


def _diffusion_cfg(**overrides):
    from configs import base

    cfg = base.get_config().diffusion
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


# ---------------------------------------------------------------------------------------------
# Several EMA rates.


def test_without_extra_rates_the_train_state_layout_is_unchanged(data_dir):
    exp = train.Experiment(tiny_config(data_dir), load_data=False)
    state = exp.abstract_state()
    assert type(state) is train.TrainState
    assert {k.split(".")[0] for k in checkpoint.state_shapes(state)} == {
        "step", "params", "ema_params", "opt_state", "rng", "nonfinite_count"}


# ---------------------------------------------------------------------------------------------
# The noise-level curriculum.


def test_curriculum_is_a_linear_function_of_the_step():
    cfg = _diffusion_cfg(curriculum_steps=100, curriculum_t_min_start=0.5,
                         curriculum_t_max_start=1.0, curriculum_p_mean_start=1.0,
                         curriculum_p_std_start=0.5, p_mean=-1.2, p_std=1.2)
    for step, f in [(0, 0.0), (25, 0.25), (100, 1.0), (1000, 1.0)]:
        cur = {k: float(v) for k, v in losses.curriculum_at(cfg, step).items()}
        assert cur["fraction"] == pytest.approx(f)
        assert cur["t_min"] == pytest.approx(0.5 * (1 - f))
        assert cur["t_max"] == pytest.approx(1.0)
        assert cur["p_mean"] == pytest.approx((1 - f) * 1.0 + f * -1.2)
        assert cur["p_std"] == pytest.approx((1 - f) * 0.5 + f * 1.2)


@pytest.mark.parametrize("schedule_name", ["linear", "vp_linear"])
def test_curriculum_restricts_the_sampled_times(schedule_name):
    cfg = _diffusion_cfg(schedule=schedule_name, curriculum_steps=100,
                         curriculum_t_min_start=0.5, curriculum_t_max_start=1.0)
    schedule = schedules.get_schedule(cfg)
    rng = jax.random.PRNGKey(0)
    t0, _ = jax.jit(lambda r, s: losses.draw_noise(r, (512, 2, 2, 1), schedule, cfg, s))(
        rng, jnp.int32(0))
    t_end, _ = losses.draw_noise(rng, (512, 2, 2, 1), schedule, cfg, 100)
    assert float(t0.min()) >= 0.5 and float(t0.max()) <= 1.0
    assert float(t_end.min()) < 0.05  # the whole range [0, 1] at the end of the curriculum
    # Without a curriculum the step is ignored: the same draw as before the knob existed.
    off = _diffusion_cfg(schedule=schedule_name)
    np.testing.assert_array_equal(losses.draw_noise(rng, (8, 2, 2, 1), schedule, off, 7)[0],
                                  losses.draw_noise(rng, (8, 2, 2, 1), schedule, off)[0])


def test_lognormal_curriculum_moves_the_mean_log_sigma():
    cfg = _diffusion_cfg(schedule="edm", time_sampling="lognormal", curriculum_steps=10,
                         curriculum_p_mean_start=1.0, curriculum_p_std_start=0.5)
    schedule = schedules.get_schedule(cfg)
    for step, mean, std in [(0, 1.0, 0.5), (10, -1.2, 1.2)]:
        t, _ = losses.draw_noise(jax.random.PRNGKey(1), (8192, 1, 1, 1), schedule, cfg, step)
        log_sigma = np.log(np.asarray(schedule.sigma(t)))
        assert log_sigma.mean() == pytest.approx(mean, abs=0.05)
        assert log_sigma.std() == pytest.approx(std, abs=0.05)


# ---------------------------------------------------------------------------------------------
# The validation loss at a fixed grid of noise levels.


def test_time_quantiles_are_the_midpoint_quantiles_of_the_time_distribution():
    cfg = _diffusion_cfg()
    np.testing.assert_allclose(losses.time_quantiles(LINEAR, cfg, 4),
                               np.array([126, 376, 626, 876]) / 1000, rtol=1e-6)
    edm_cfg = _diffusion_cfg(schedule="edm", time_sampling="lognormal")
    edm = schedules.get_schedule(edm_cfg)
    ts = losses.time_quantiles(edm, edm_cfg, 3)
    from scipy.stats import norm

    expected = np.exp(-1.2 + 1.2 * norm.ppf([1 / 6, 1 / 2, 5 / 6]))
    np.testing.assert_allclose(edm.sigma(ts), expected, rtol=1e-4)


def test_grid_loss_is_deterministic_and_equals_a_direct_computation():
    cfg = _diffusion_cfg(parameterization="v", weighting="min_snr")
    x0 = jax.random.uniform(jax.random.PRNGKey(3), (5, 4, 4, 1), minval=-1, maxval=1)
    apply = lambda x, cond: 0.3 * x + 1e-4 * cond[:, None, None, None]  # noqa: E731
    ts = losses.time_quantiles(LINEAR, cfg, 6)
    rng = jax.random.PRNGKey(11)
    got = losses.grid_loss(apply, x0, ts, rng, LINEAR, cfg)
    assert got.shape == (6, 5)
    np.testing.assert_array_equal(got, losses.grid_loss(apply, x0, ts, rng, LINEAR, cfg))
    for k, t in enumerate(np.asarray(ts)):
        eps = jax.random.normal(jax.random.fold_in(rng, k), x0.shape)
        alpha, sigma = LINEAR.alpha(t), LINEAR.sigma(t)
        x_t = alpha * x0 + sigma * eps
        v = alpha * eps - sigma * x0
        snr = alpha**2 / sigma**2
        weight = np.minimum(snr, 5.0) / (snr + 1.0)  # Min-SNR on the v error (Hang et al. 2023)
        cond = np.full((5,), t * 1000 - 1)
        direct = weight * np.mean((np.asarray(apply(x_t, cond)) - v) ** 2, axis=(1, 2, 3))
        np.testing.assert_allclose(got[k], direct, rtol=2e-4, atol=1e-7)


def test_training_keeps_every_ema_rate_and_a_reproducible_validation_loss(data_dir, tmp_path):
    """A run with two extra EMA rates, a held-out split and a curriculum, checkpointed every
    step: each rate follows its own recursion e_k = d_k e_(k-1) + (1 - d_k) p_k across the
    checkpoints; val_loss is logged at the chosen steps and recomputed exactly from the
    checkpoint; sampling selects rates and checkpoints (an ensemble)."""
    from diffjax import sample

    workdir = str(tmp_path / "run")
    rates = (0.9, 0.5)
    config = tiny_config(data_dir, **{
        "data.split": "train[:90%]", "data.val_split": "train[90%:]",
        "training.val_every_steps": 2, "training.val_num_examples": 16,
        "training.val_num_levels": 3, "training.ema_decays": rates,
        "training.checkpoint_every_steps": 1, "training.keep_checkpoints": 4,
        "diffusion.curriculum_steps": 3, "diffusion.curriculum_t_min_start": 0.5})
    config_lib.validate(config)
    train.train(config, workdir)
    records = writers.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all("loss" in r for r in records)  # val_loss shares the step's record
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert sorted(val) == [2, 4] and all(np.isfinite(list(val.values())))

    exp = train.Experiment(config, workdir)
    states = {step: sample.restore_step(exp, workdir, step) for step in (1, 2, 3, 4)}
    assert all(isinstance(s, train.MultiEMATrainState) for s in states.values())
    warmup = config.training.ema_warmup
    for k in (2, 3, 4):  # update k - 1 turned the state of step k - 1 into that of step k
        for rate, pick in [(config.training.ema_decay, lambda s: s.ema_params),
                           (rates[0], lambda s: s.extra_ema[0]),
                           (rates[1], lambda s: s.extra_ema[1])]:
            d = float(train.ema_decay_at(jnp.int32(k - 1), rate, warmup))
            for e, e_prev, p in zip(*(jax.tree.leaves(x) for x in (
                    pick(states[k]), pick(states[k - 1]), states[k].params))):
                np.testing.assert_allclose(np.asarray(e), d * np.asarray(e_prev)
                                           + (1 - d) * np.asarray(p), rtol=1e-5, atol=1e-7)
    state = states[4]
    assert train.ema_params_of(state, config, 0.5) is state.extra_ema[1]
    assert train.ema_params_of(state, config, 0.0) is state.params
    with pytest.raises(ValueError, match=r"contains 0.7, which this run does not keep; allowed: "
                                         r"0.999, 0.9, 0.5 or 0.0"):
        train.ema_params_of(state, config, 0.7)

    assert exp.num_val_batches == 2  # 16 held-out examples in batches of 8
    val_loss = exp.val_loss_fn()
    assert val_loss(state.params) == val[4]  # the logged value, recomputed from the checkpoint
    assert val_loss(states[2].params) == val[2]

    config.sampling.ema_decays = (0.5, 0.0)
    config.sampling.checkpoint_steps = (2, 4)
    config_lib.validate(config)
    params, newest = sample.restore_sampling_params(exp, config, workdir)
    assert newest == 4 and len(params) == 4  # 2 checkpoints x 2 rates
    for got, want in zip(params, [states[2].extra_ema[1], states[2].params,
                                  states[4].extra_ema[1], states[4].params]):
        np.testing.assert_array_equal(jax.tree.leaves(got)[0], jax.tree.leaves(want)[0])
    assert sample.params_tag(config) == "_ema0.5-0_ckpt2-4"
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["training"]["ema_decays"] == list(rates)


# ---------------------------------------------------------------------------------------------
# Ensembles at sampling time.


def test_an_ensemble_averages_the_members_outputs_and_two_identical_members_equal_one(data_dir):
    from diffjax import parallel

    config = tiny_config(data_dir, **{"sampling.sampler": "ddim", "sampling.num_steps": 2})
    exp = train.Experiment(config, load_data=False)
    base = exp.init_state().params
    leaves, treedef = jax.tree.flatten(base)
    noisy = [treedef.unflatten([p + 0.05 * jax.random.normal(jax.random.PRNGKey(i), p.shape)
                                for p in leaves]) for i in range(2)]
    mesh = parallel.make_mesh(1)
    gen = generate.Generator(exp.model, exp.schedule, config, mesh, exp.image_shape)
    x = jax.random.normal(jax.random.PRNGKey(7), (4, *exp.image_shape))
    t = jnp.full((4,), 0.5)
    one, two = (gen.model_fn(p)(x, t, None) for p in noisy)
    np.testing.assert_allclose(gen.model_fn(tuple(noisy))(x, t, None), (one + two) / 2,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(gen.model_fn((noisy[0], noisy[0]))(x, t, None), one)


@pytest.mark.parametrize("overrides, message", [
    ({"sampling.ema_decays": (0.5,)}, r"config.sampling.ema_decays=\(0.5,\) is invalid: 0.5 is "
     r"not an EMA rate this run keeps; allowed: 0.999 \(training.ema_decay"),
    ({"training.ema_decays": (0.999,)}, r"config.training.ema_decays=\(0.999,\) is invalid: "
     r"rates must be distinct and differ from training.ema_decay=0.999"),
    ({"training.val_every_steps": 10}, r"config.training.val_every_steps=10 is invalid: the "
     r"validation loss needs a held-out split: set config.data.val_split"),
    ({"sampling.checkpoint_steps": (0,)}, r"config.sampling.checkpoint_steps=\(0,\) is invalid"),
    ({"diffusion.curriculum_t_min_start": 1.0}, r"config.diffusion.curriculum_t_min_start=1.0 "
     r"is invalid: need 0 <= curriculum_t_min_start < curriculum_t_max_start"),
])
def test_bad_knob_values_are_rejected_with_the_key_and_what_is_allowed(data_dir, overrides,
                                                                       message):
    with pytest.raises(ValueError, match=message):
        config_lib.validate(tiny_config(data_dir, **overrides))
