"""EDM2's power-function EMA and post-hoc reconstruction (Karras et al. 2024, Sec. 3), against
the paper's numbers, closed forms and directly tracked EMAs."""

import numpy as np
import pytest
from scipy import integrate

from diffjax import ema as ema_lib
from diffjax import posthoc_ema
from diffjax.core import power_ema
from diffjax.errors import ConfigError


def test_sigma_rel_005_and_010_are_edm2s_gamma_1697_and_694():
    # EDM2 Sec. 3.1: "sigma_rel = 0.05 and 0.10 ... gamma = 16.97 and 6.94".
    np.testing.assert_allclose(power_ema.gamma_of_sigma_rel(np.array([0.05, 0.10])),
                               [16.97, 6.94], atol=0.005)


def test_power_ema_weights_each_update_by_the_integrated_power_profile():
    """After t updates with beta_t = (1 - 1/t)^(gamma+1), update k carries the profile's mass on
    [k-1, k]: (k/t)^(gamma+1) - ((k-1)/t)^(gamma+1), i.e. the integral of (gamma+1) tau^gamma /
    t^(gamma+1)."""
    ema = ema_lib.PowerEMA((0.05, 0.10))
    rng = np.random.default_rng(0)
    values = rng.normal(size=37).astype(np.float32)
    state = ema.init({"w": np.float32(0.0)})
    for step, value in enumerate(values):
        state = ema.update(state, {"w": np.float32(value)}, np.int32(step))
    t = len(values)
    for profile, sigma_rel in zip(state, (0.05, 0.10)):
        gamma = float(power_ema.gamma_of_sigma_rel(sigma_rel))
        mass = [integrate.quad(lambda tau: (gamma + 1) * tau ** gamma / t ** (gamma + 1),
                               k - 1, k)[0] for k in range(1, t + 1)]
        np.testing.assert_allclose(float(profile["w"]), np.dot(mass, values), rtol=2e-5)


def test_profile_inner_product_is_the_integral_of_the_two_profiles():
    for t_a, g_a, t_b, g_b in [(100.0, 6.94, 160.0, 16.97), (160.0, 3.0, 40.0, 11.0)]:
        def profile(tau, t, g):
            return (g + 1) * tau ** g / t ** (g + 1) if tau <= t else 0.0

        numeric = integrate.quad(lambda tau: profile(tau, t_a, g_a) * profile(tau, t_b, g_b),
                                 0, min(t_a, t_b), limit=200)[0]
        np.testing.assert_allclose(power_ema.profile_inner_product(t_a, g_a, t_b, g_b), numeric,
                                   rtol=1e-8)


def _tracked_run(tmp_path, widths, num_steps=800, snapshot_every=25):
    """A 64-parameter random-walk trajectory under PowerEMA(widths), snapshotted every
    snapshot_every steps (the first two widths only); returns (workdir, final EMA state)."""
    ema = ema_lib.PowerEMA(widths)
    snapshot_ema = ema_lib.PowerEMA(widths[:2])
    rng = np.random.default_rng(1)
    params = {"a": np.zeros(48, np.float32), "b": {"c": np.zeros((4, 4), np.float32)}}
    state = ema.init(params)
    for step in range(num_steps):
        params = {"a": params["a"] + rng.normal(size=48).astype(np.float32),
                  "b": {"c": params["b"]["c"] + rng.normal(size=(4, 4)).astype(np.float32)}}
        state = ema.update(state, params, np.int32(step))
        if (step + 1) % snapshot_every == 0:
            posthoc_ema.save_snapshots(str(tmp_path), step + 1, snapshot_ema, state[:2])
    return str(tmp_path), state


def _flat(tree):
    return np.concatenate([np.ravel(tree["a"]), np.ravel(tree["b"]["c"])])


def test_reconstruction_at_a_tracked_width_reproduces_that_ema(tmp_path):
    workdir, state = _tracked_run(tmp_path, (0.05, 0.10))
    like = {"a": np.zeros(48, np.float32), "b": {"c": np.zeros((4, 4), np.float32)}}
    params, recipe = posthoc_ema.reconstruct(workdir, 0.10, like)
    assert recipe["step"] == 800 and recipe["profile_error"] < 1e-6
    np.testing.assert_allclose(_flat(params), _flat(state[1]), rtol=1e-6, atol=1e-5)


def test_reconstructed_sigma_rel_007_is_close_to_the_directly_tracked_one(tmp_path):
    """From the 0.05 and 0.10 snapshots alone, the 0.07 EMA is reconstructed to within 10% of
    the gap between the two stored profiles (EDM2 Fig. 4: the reconstruction tracks the true
    EMA); a plain average of the two stored profiles is off by much more."""
    workdir, state = _tracked_run(tmp_path, (0.05, 0.10, 0.07))
    like = {"a": np.zeros(48, np.float32), "b": {"c": np.zeros((4, 4), np.float32)}}
    params, _ = posthoc_ema.reconstruct(workdir, 0.07, like)
    truth, gap = _flat(state[2]), np.linalg.norm(_flat(state[0]) - _flat(state[1]))
    error = np.linalg.norm(_flat(params) - truth)
    naive = np.linalg.norm((_flat(state[0]) + _flat(state[1])) / 2 - truth)
    assert error < 0.1 * gap, (error, gap)
    assert error < 0.5 * naive, (error, naive)


def test_a_width_the_snapshots_cannot_reconstruct_is_refused_with_the_range(tmp_path):
    workdir, _ = _tracked_run(tmp_path, (0.05, 0.10), num_steps=100)
    with pytest.raises(ConfigError, match=r"sigma_rel=0.005 is outside .* reconstruct widths"):
        posthoc_ema.plan(workdir, 0.005)
    with pytest.raises(ConfigError, match="holds none"):
        posthoc_ema.plan(str(tmp_path / "empty"), 0.07)


def test_posthoc_ema_needs_the_power_ema_and_no_other_params_choice(data_dir):
    from conftest import tiny_config

    from diffjax.experiment import Experiment

    with pytest.raises(ConfigError, match=r"config.ema.sigma_rel=0.07 .*ema.name='power'"):
        Experiment(tiny_config(data_dir, **{"ema.sigma_rel": 0.07}), load_data=False)
    with pytest.raises(ConfigError, match=r"config.ema.snapshot_every=5 .*ema.name='power'"):
        Experiment(tiny_config(data_dir, **{"ema.snapshot_every": 5}), load_data=False)
    config = tiny_config(data_dir, **{"ema.name": "power", "ema.sigma_rel": 0.07,
                                      "sampling.ema_decays": (0.05,)})
    with pytest.raises(ConfigError, match="cannot be combined"):
        Experiment(config, load_data=False)
    with pytest.raises(ConfigError, match=r"config.ema.sigma_rel=0.5 is invalid"):
        Experiment(tiny_config(data_dir, **{"ema.name": "power", "ema.sigma_rel": 0.5}),
                   load_data=False)


def test_training_snapshots_feed_reconstruct_ema_and_sampling(data_dir, tmp_path):
    """A 4-step run with snapshots every 2 steps: --mode=reconstruct_ema writes the 0.10
    profile equal to the checkpoint's tracked EMA, and sampling with ema.sigma_rel reads it."""
    import jax
    from conftest import tiny_config, train_run

    from diffjax import modes, restore
    from diffjax.experiment import Experiment

    workdir = str(tmp_path / "run")
    config = tiny_config(data_dir, **{"ema.name": "power", "ema.snapshot_every": 2})
    state = train_run(config, workdir)
    assert [s[:2] for s in posthoc_ema.list_snapshots(workdir)] == [
        (2, 0.05), (2, 0.10), (4, 0.05), (4, 0.10)]
    config.ema.sigma_rel = 0.10
    modes.run("reconstruct_ema", config, workdir)
    params, step = restore.sampling_params(Experiment(config, workdir, load_data=False), workdir)
    assert step == 4
    tracked = state.ema[1]
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(tracked)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
