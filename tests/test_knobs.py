"""Training knobs: several EMA rates, the noise-level curriculum, the validation loss at a fixed
grid of noise levels, and checkpoint/EMA ensembles at sampling time."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config, train_run

from diffjax import checkpoint, ema, restore, writers
from diffjax.core import schedules, time_sampling
from diffjax.core.parameterizations import make_parameterization
from diffjax.experiment import Experiment, validate
from diffjax.objectives.denoising import Denoising, DenoisingOptions
from diffjax.training.validation import make_val_loss, num_val_batches

LINEAR = schedules.DiscreteSchedule(tuple(schedules.linear_betas(1000)))


def _objective(schedule=LINEAR, parameterization="eps", **options):
    return Denoising(schedule, make_parameterization(parameterization),
                     DenoisingOptions(**options))


# ---------------------------------------------------------------------------------------------
# Several EMA rates: one code path.


def test_one_ema_rate_or_several_share_the_train_state_layout(data_dir):
    exp = Experiment(tiny_config(data_dir), load_data=False)
    state = exp.abstract_state()
    assert {k.split(".")[0] for k in checkpoint.state_shapes(state)} == {
        "step", "params", "ema", "opt_state", "rng", "nonfinite_count"}
    assert len(state.ema) == 1
    three = Experiment(tiny_config(data_dir, **{"ema.fixed.decays": (0.999, 0.9, 0.5)}),
                       load_data=False).abstract_state()
    assert len(three.ema) == 3
    for tree in three.ema:
        assert jax.tree.structure(tree) == jax.tree.structure(state.params)


# ---------------------------------------------------------------------------------------------
# The noise-level curriculum.


def test_curriculum_is_a_linear_function_of_the_step():
    cur_options = time_sampling.Curriculum(steps=100, t_min_start=0.5, t_max_start=1.0,
                                           p_mean_start=1.0, p_std_start=0.5)
    for step, f in [(0, 0.0), (25, 0.25), (100, 1.0), (1000, 1.0)]:
        cur = {k: float(v) for k, v in
               time_sampling.curriculum_at(cur_options, step, p_mean=-1.2, p_std=1.2).items()}
        assert cur["fraction"] == pytest.approx(f)
        assert cur["t_min"] == pytest.approx(0.5 * (1 - f))
        assert cur["t_max"] == pytest.approx(1.0)
        assert cur["p_mean"] == pytest.approx((1 - f) * 1.0 + f * -1.2)
        assert cur["p_std"] == pytest.approx((1 - f) * 0.5 + f * 1.2)


@pytest.mark.parametrize("schedule_name", ["linear", "vp_linear"])
def test_curriculum_restricts_the_sampled_times(schedule_name):
    schedule = schedules.make_schedule(schedule_name)
    objective = _objective(schedule, curriculum_steps=100, curriculum_t_min_start=0.5,
                           curriculum_t_max_start=1.0)
    rng = jax.random.PRNGKey(0)
    t0, _ = jax.jit(lambda r, s: objective.draw_noise(r, (512, 2, 2, 1), s))(rng, jnp.int32(0))
    t_end, _ = objective.draw_noise(rng, (512, 2, 2, 1), 100)
    assert float(t0.min()) >= 0.5 and float(t0.max()) <= 1.0
    assert float(t_end.min()) < 0.05  # the whole range [0, 1] at the end of the curriculum
    # Without a curriculum the step is ignored: the same draw as before the knob existed.
    off = _objective(schedule)
    np.testing.assert_array_equal(off.draw_noise(rng, (8, 2, 2, 1), 7)[0],
                                  off.draw_noise(rng, (8, 2, 2, 1))[0])


def test_lognormal_curriculum_moves_the_mean_log_sigma():
    schedule = schedules.make_schedule("edm")
    objective = _objective(schedule, time_sampling="lognormal", curriculum_steps=10,
                           curriculum_p_mean_start=1.0, curriculum_p_std_start=0.5)
    for step, mean, std in [(0, 1.0, 0.5), (10, -1.2, 1.2)]:
        t, _ = objective.draw_noise(jax.random.PRNGKey(1), (8192, 1, 1, 1), step)
        log_sigma = np.log(np.asarray(schedule.sigma(t)))
        assert log_sigma.mean() == pytest.approx(mean, abs=0.05)
        assert log_sigma.std() == pytest.approx(std, abs=0.05)


# ---------------------------------------------------------------------------------------------
# The validation loss at a fixed grid of noise levels.


def test_time_quantiles_are_the_midpoint_quantiles_of_the_time_distribution():
    np.testing.assert_allclose(time_sampling.time_quantiles(LINEAR, "uniform", 4),
                               np.array([126, 376, 626, 876]) / 1000, rtol=1e-6)
    edm = schedules.make_schedule("edm")
    ts = time_sampling.time_quantiles(edm, "lognormal", 3, p_mean=-1.2, p_std=1.2)
    from scipy.stats import norm

    expected = np.exp(-1.2 + 1.2 * norm.ppf([1 / 6, 1 / 2, 5 / 6]))
    np.testing.assert_allclose(edm.sigma(ts), expected, rtol=1e-4)


def test_validation_loss_is_deterministic_and_equals_a_direct_computation():
    objective = _objective(parameterization="v", weighting="min_snr")
    x0 = jax.random.uniform(jax.random.PRNGKey(3), (5, 4, 4, 1), minval=-1, maxval=1)

    def apply(params, x, cond, _):
        return 0.3 * x + 1e-4 * cond[:, None, None, None]

    ts = objective.validation_times(6)
    rng = jax.random.PRNGKey(11)
    got = objective.validation_losses({"network": None}, apply, x0, {}, rng, 6)
    assert got.shape == (6, 5)
    np.testing.assert_array_equal(
        got, objective.validation_losses({"network": None}, apply, x0, {}, rng, 6))
    for k, t in enumerate(np.asarray(ts)):
        eps = jax.random.normal(jax.random.fold_in(rng, k), x0.shape)
        alpha, sigma = LINEAR.alpha(t), LINEAR.sigma(t)
        x_t = alpha * x0 + sigma * eps
        v = alpha * eps - sigma * x0
        snr = alpha**2 / sigma**2
        weight = np.minimum(snr, 5.0) / (snr + 1.0)  # Min-SNR on the v error (Hang et al. 2023)
        cond = np.full((5,), t * 1000 - 1)
        direct = weight * np.mean((np.asarray(apply(None, x_t, cond, {})) - v) ** 2,
                                  axis=(1, 2, 3))
        np.testing.assert_allclose(got[k], direct, rtol=2e-4, atol=1e-7)


def test_training_keeps_every_ema_rate_and_a_reproducible_validation_loss(data_dir, tmp_path):
    """A run with three EMA rates, a held-out split and a curriculum, checkpointed every step:
    each rate follows its own recursion e_k = d_k e_(k-1) + (1 - d_k) p_k across the
    checkpoints; val_loss is logged at the chosen steps and recomputed exactly from the
    checkpoint; sampling selects rates and checkpoints (an ensemble)."""
    workdir = str(tmp_path / "run")
    rates = (0.999, 0.9, 0.5)
    config = tiny_config(data_dir, **{
        "data.split": "train[:90%]", "data.val_split": "train[90%:]",
        "training.val_every_steps": 2, "training.val_num_examples": 16,
        "training.val_num_levels": 3, "ema.fixed.decays": rates,
        "training.checkpoint_every_steps": 1, "training.keep_checkpoints": 4,
        "objective.denoising.curriculum_steps": 3,
        "objective.denoising.curriculum_t_min_start": 0.5})
    validate(config)
    train_run(config, workdir)
    records = writers.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all("loss" in r for r in records)  # val_loss shares the step's record
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert sorted(val) == [2, 4] and all(np.isfinite(list(val.values())))

    exp = Experiment(config, workdir)
    states = {step: restore.restore_step(exp, workdir, step) for step in (1, 2, 3, 4)}
    warmup = config.ema.fixed.warmup
    for k in (2, 3, 4):  # update k - 1 turned the state of step k - 1 into that of step k
        for i, rate in enumerate(rates):
            d = float(ema.decay_at(jnp.int32(k - 1), rate, warmup))
            for e, e_prev, p in zip(*(jax.tree.leaves(x) for x in (
                    states[k].ema[i], states[k - 1].ema[i], states[k].params))):
                np.testing.assert_allclose(np.asarray(e), d * np.asarray(e_prev)
                                           + (1 - d) * np.asarray(p), rtol=1e-5, atol=1e-7)
    state = states[4]
    assert restore.params_at(exp, state, 0.5) is state.ema[2]
    assert restore.params_at(exp, state, 0.0) is state.params
    with pytest.raises(ValueError, match=r"contains 0.7, which this run does not keep; allowed: "
                                         r"0.999, 0.9, 0.5 \(config.ema.fixed.decays\) or 0.0"):
        restore.params_at(exp, state, 0.7)

    assert num_val_batches(exp.training, exp.val_pipeline.num_examples) == 2  # 16 in batches of 8
    val_loss = make_val_loss(exp)
    assert val_loss(state) == val[4]  # the logged value, recomputed from the checkpoint
    assert val_loss(states[2]) == val[2]

    config.sampling.ema_decays = (0.5, 0.0)
    config.sampling.checkpoint_steps = (2, 4)
    picked = validate(config)
    params, newest = restore.sampling_params(picked, workdir)
    assert newest == 4 and len(params) == 4  # 2 checkpoints x 2 rates
    for got, want in zip(params, [states[2].ema[2], states[2].params,
                                  states[4].ema[2], states[4].params]):
        np.testing.assert_array_equal(jax.tree.leaves(got)[0], jax.tree.leaves(want)[0])
    assert restore.params_tag(picked.sampling) == "_ema0.5-0_ckpt2-4"
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["ema"]["fixed"]["decays"] == list(rates)


# ---------------------------------------------------------------------------------------------
# Ensembles at sampling time.


def test_an_ensemble_averages_the_members_outputs_and_two_identical_members_equal_one(data_dir):
    config = tiny_config(data_dir, **{"sampling.sampler": "ddim", "sampling.num_steps": 2})
    exp = Experiment(config, load_data=False)
    base = exp.init_state().params
    leaves, treedef = jax.tree.flatten(base)
    noisy = [treedef.unflatten([p + 0.05 * jax.random.normal(jax.random.PRNGKey(i), p.shape)
                                for p in leaves]) for i in range(2)]
    gen = exp.generator()
    x = jax.random.normal(jax.random.PRNGKey(7), (4, *exp.image_shape))
    t = jnp.full((4,), 0.5)
    one, two = (gen.model_fn(p)(x, t, {}) for p in noisy)
    np.testing.assert_allclose(gen.model_fn(tuple(noisy))(x, t, {}), (one + two) / 2,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(gen.model_fn((noisy[0], noisy[0]))(x, t, {}), one)


@pytest.mark.parametrize("overrides, message", [
    ({"sampling.ema_decays": (0.5,)}, r"config.sampling.ema_decays=\(0.5,\) is invalid: 0.5 is "
     r"not an EMA rate this run keeps; allowed: 0.999 \(config.ema.fixed"),
    ({"ema.fixed.decays": (0.999, 0.999)}, r"config.ema.fixed.decays=\(0.999, 0.999\) is "
     r"invalid: rates must be distinct"),
    ({"training.val_every_steps": 10}, r"config.training.val_every_steps=10 is invalid: the "
     r"validation loss needs a held-out split: set config.data.val_split"),
    ({"sampling.checkpoint_steps": (0,)}, r"config.sampling.checkpoint_steps=\(0,\) is invalid"),
    ({"objective.denoising.curriculum_t_min_start": 1.0},
     r"config.objective.denoising.curriculum_t_min_start=1.0 is invalid: need 0 <= "
     r"curriculum_t_min_start < curriculum_t_max_start"),
])
def test_bad_knob_values_are_rejected_with_the_key_and_what_is_allowed(data_dir, overrides,
                                                                       message):
    with pytest.raises(ValueError, match=message):
        validate(tiny_config(data_dir, **overrides))
