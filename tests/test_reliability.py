"""Faults a long run meets: preemption, hard kills, corrupt checkpoints, NaNs, full disks."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import tiny_config, train_run

from diffjax import checkpoint, writers
from diffjax.errors import NonFiniteError
from diffjax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 40
RUN = ["--config.data.image_size=16", "--config.model.unet.ch_mult=(1,2)",
       "--config.model.unet.attn_resolutions=(8,)", "--config.training.batch_size=8",
       f"--config.training.num_steps={NUM_STEPS}", "--config.training.log_every_steps=1",
       "--config.training.checkpoint_every_steps=10", "--config.training.keep_checkpoints=1",
       "--config.training.sample_every_steps=0", "--config.sampling.num_steps=2",
       "--config.sampling.grid_samples=2", "--config.sampling.batch_size=2",
       "--config.mesh.cpu_devices=2", "--config.optim.warmup_steps=2"]


def _launch(workdir, data_dir, *extra, kill_during_save=None, wait=True):
    """launch.py with RUN's flags; kill_during_save=STEP: SIGKILL once that save has started
    (through the test-only tests/helpers/kill_during_save.py)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", DIFFJAX_DATA_DIR=data_dir,
               PYTHONUNBUFFERED="1")
    entry = [os.path.join(ROOT, "launch.py")]
    if kill_during_save is not None:
        entry = [os.path.join(ROOT, "tests", "helpers", "kill_during_save.py"),
                 str(kill_during_save)]
    args = [sys.executable, *entry, "--workdir", str(workdir), *RUN, *extra]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _losses(workdir):
    return [(r["step"], r["loss"]) for r in writers.read_metrics(os.path.join(workdir,
                                                                             "metrics.jsonl"))]


def _final_arrays(workdir, step=NUM_STEPS):
    """The arrays of checkpoint `step` as numpy, read without a target (host-local restore)."""
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                    item_handlers=ocp.StandardCheckpointHandler())
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
                          dict(manager.item_metadata(step)))
    restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    manager.close()
    return {checkpoint._path_name(p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(restored)[0]}


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    out = _launch(workdir, data_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    return str(workdir)


def _assert_same_run(workdir, reference):
    assert _losses(workdir) == _losses(reference)
    assert [s for s, _ in _losses(workdir)] == list(range(1, NUM_STEPS + 1))
    a, b = _final_arrays(workdir), _final_arrays(reference)
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:  # params, EMA, optimizer state, RNG and step: bit for bit
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_sigterm_checkpoints_and_the_restart_is_bit_exact(data_dir, tmp_path, uninterrupted):
    workdir = tmp_path / "preempted"
    proc = _launch(workdir, data_dir, wait=False)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped = int(err.split("stopped by SIGTERM after step ")[1].split(":")[0])
    assert 3 <= stopped < NUM_STEPS, "the signal must arrive mid-run"
    assert f"checkpoint step {stopped} is committed" in err
    assert checkpoint.verify_manifest(str(workdir / "checkpoints" / str(stopped)))

    resumed = _launch(workdir, data_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from checkpoint step {stopped}" in resumed.stdout
    _assert_same_run(workdir, uninterrupted)


def test_sigkill_during_an_async_save_resumes_from_the_previous_step(data_dir, tmp_path,
                                                                    uninterrupted):
    workdir = tmp_path / "killed"
    killed = _launch(workdir, data_dir, kill_during_save=20)
    assert killed.returncode == -signal.SIGKILL
    ckpt_dir = workdir / "checkpoints"
    # keep_checkpoints=1, yet step 10 survives: nothing is deleted before a newer step commits.
    assert sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) == [10]

    resumed = _launch(workdir, data_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint step 10" in resumed.stdout
    _assert_same_run(workdir, uninterrupted)


def test_changed_model_shape_is_not_resumed_silently(data_dir, tmp_path, uninterrupted):
    workdir = tmp_path / "reshaped"
    shutil.copytree(uninterrupted, workdir)
    out = _launch(workdir, data_dir, "--config.model.unet.ch=64")
    assert out.returncode == 2
    assert "whose train state has another shape" in out.stderr
    assert "model.unet.ch: 32 -> 64" in out.stderr and "--fresh" in out.stderr
    assert "Traceback" not in out.stderr
    assert sorted(os.listdir(workdir / "checkpoints")) == [str(NUM_STEPS)]  # untouched


def test_fresh_moves_the_old_run_aside(tmp_path):
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text("{}")
    loop.prepare_workdir(str(workdir), fresh=True)
    assert os.listdir(workdir) == []
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("run.prev-")]
    assert sorted(os.listdir(aside)) == ["checkpoints", "config.json"]


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"--workdir .*a_file/run cannot be created or written"):
        loop.prepare_workdir(str(blocker / "run"))


# ---------------------------------------------------------------------------------------------
# Corrupt checkpoints, on a small state (no model needed).


def _small_state(value: float):
    return {"params": {"w": jnp.full((64, 64), value), "b": jnp.arange(8.0) + value},
            "step": jnp.asarray(int(value), jnp.int32)}


def _largest_file(step_dir):
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs
             if f != checkpoint.MANIFEST]
    return max(files, key=os.path.getsize)


def _flip_bytes(path):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        middle = len(data) // 2
        data[middle:middle + 4] = bytes(b ^ 0xFF for b in data[middle:middle + 4])
        f.seek(0)
        f.write(data)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


CORRUPTIONS = {"flipped_bytes": (_flip_bytes, "SHA-256"), "truncated": (_truncate, "bytes"),
               "missing_file": (os.remove, "missing")}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_latest_step_falls_back_to_the_previous_one(kind, tmp_path, capsys):
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), keep=3)
    for step in (1, 2):
        ckpt.save(step, _small_state(float(step)))
    ckpt.close()
    corrupt, reason = CORRUPTIONS[kind]
    corrupt(_largest_file(str(tmp_path / "checkpoints" / "2")))

    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), keep=3)
    state, step = ckpt.restore_latest(_small_state(0.0))
    assert step == 1
    np.testing.assert_array_equal(state["params"]["w"], np.full((64, 64), 1.0))
    assert f"checkpoint step 2 in {tmp_path / 'checkpoints'} is corrupt" in capsys.readouterr().out
    assert ckpt.steps() == [1]
    (moved,) = os.listdir(tmp_path / "checkpoints" / checkpoint.CORRUPT_DIR)
    assert moved.startswith("2-")
    assert reason in (tmp_path / "checkpoints" / "corrupt" / moved / "REASON.txt").read_text()
    # Training goes on and can save step 2 again.
    ckpt.save(2, _small_state(5.0))
    ckpt.close()
    assert checkpoint.Checkpointer(str(tmp_path / "checkpoints")).restore_latest(
        _small_state(0.0))[1] == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_step_with_one_non_finite_value_is_quarantined(bad, tmp_path, capsys):
    """Its bytes are intact (the manifest verifies): one NaN/inf in params alone moves it to
    corrupt/, and the previous step is restored."""
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), keep=3)
    ckpt.save(1, _small_state(1.0))
    poisoned = _small_state(2.0)
    poisoned["params"]["w"] = poisoned["params"]["w"].at[17, 5].set(bad)
    ckpt.save(2, poisoned)
    ckpt.close()
    assert checkpoint.verify_manifest(str(tmp_path / "checkpoints" / "2"))

    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), keep=3)
    state, step = ckpt.restore_latest(_small_state(0.0))
    assert step == 1
    np.testing.assert_array_equal(state["params"]["w"], np.full((64, 64), 1.0))
    assert "checkpoint step 2" in capsys.readouterr().out
    assert ckpt.steps() == [1]
    (moved,) = os.listdir(tmp_path / "checkpoints" / checkpoint.CORRUPT_DIR)
    assert moved.startswith("2-")
    assert "non-finite" in (tmp_path / "checkpoints" / "corrupt" / moved / "REASON.txt"
                            ).read_text()
    w = _final_arrays_of(tmp_path / "checkpoints" / "corrupt" / moved)["params.w"]
    assert not np.isfinite(w[17, 5]) and np.isfinite(np.delete(w.ravel(), 17 * 64 + 5)).all()


def _final_arrays_of(step_dir):
    """The arrays of one Orbax step directory, read without a target."""
    handler = ocp.StandardCheckpointHandler()
    restored = ocp.Checkpointer(handler).restore(os.path.join(str(step_dir), "default"))
    return {checkpoint._path_name(p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(restored)[0]}


def test_read_only_modes_do_not_move_corrupt_steps(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), keep=3)
    for step in (1, 2):
        ckpt.save(step, _small_state(float(step)))
    ckpt.close()
    _flip_bytes(_largest_file(str(tmp_path / "checkpoints" / "2")))
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
    assert ckpt.restore_latest(_small_state(0.0), quarantine=False)[1] == 1
    assert ckpt.steps() == [1, 2]
    # One named step (sampling.checkpoint_steps): the same checks, no fallback, nothing moved.
    np.testing.assert_array_equal(ckpt.restore(1, _small_state(0.0))["params"]["b"],
                                  np.arange(8.0) + 1)
    with pytest.raises(ValueError, match=r"checkpoint step 2 in .* is corrupt: "
                                         r"CorruptCheckpointError: .*SHA-256"):
        ckpt.restore(2, _small_state(0.0))
    other = {"params": {"w": jnp.zeros((32, 64)), "b": jnp.zeros(8)},
             "step": jnp.zeros((), jnp.int32)}
    with pytest.raises(ValueError, match=r"checkpoint step 1 .* holds another train state"):
        ckpt.restore(1, other)
    with pytest.raises(FileNotFoundError, match=r"holds steps \[1, 2\], not 3"):
        ckpt.restore(3, _small_state(0.0))
    assert ckpt.steps() == [1, 2]


def test_intact_step_of_another_shape_is_an_error_not_a_fallback(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
    ckpt.save(1, _small_state(1.0))
    ckpt.close()
    other = {"params": {"w": jnp.zeros((32, 64)), "b": jnp.zeros(8)},
             "step": jnp.zeros((), jnp.int32)}
    with pytest.raises(ValueError, match=r"holds another train state than this run.s: 1 arrays "
                       r"differ, e.g. params.w: saved \(64, 64\), now \(32, 64\)"):
        checkpoint.Checkpointer(str(tmp_path / "checkpoints")).restore_latest(other)
    assert os.listdir(tmp_path / "checkpoints") == ["1"]


# ---------------------------------------------------------------------------------------------
# Non-finite steps and a full disk, through the real training loop.


def poison_losses_at(monkeypatch, steps) -> None:
    """Makes the denoising loss (and so every gradient) NaN at these 0-based update indices."""
    from diffjax.objectives.denoising import Denoising

    real_loss = Denoising.loss

    def poisoned(self, params, apply, inputs, state, step):
        loss, metrics = real_loss(self, params, apply, inputs, state, step)
        return loss * jnp.where(jnp.isin(step, jnp.asarray(steps)), jnp.nan, 1.0), metrics

    monkeypatch.setattr(Denoising, "loss", poisoned)


def test_nan_updates_are_skipped_then_training_stops(data_dir, tmp_path, monkeypatch):
    poison_losses_at(monkeypatch, [2, 3])  # updates 3 and 4 (1-based)
    config = tiny_config(data_dir, **{"training.num_steps": 8,
                                      "training.checkpoint_every_steps": 1,
                                      "training.keep_checkpoints": 5,
                                      "training.max_nonfinite_steps": 2})
    workdir = str(tmp_path / "nan")
    with pytest.raises(NonFiniteError, match=r"non-finite for 2 steps in a row \(steps 3\.\.4; "
                       r"config.training.max_nonfinite_steps=2\); stopped at step 4") as info:
        train_run(config, workdir)
    assert "last committed checkpoint is step 3" in str(info.value)

    records = writers.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 1]
    assert records[2]["loss"] is None and np.isfinite(records[1]["loss"])
    before, skipped = _final_arrays(workdir, 2), _final_arrays(workdir, 3)
    assert before["step"] == 2 and skipped["step"] == 3 and skipped["nonfinite_count"] == 1
    for key in before:  # the skipped update left params, EMA and optimizer state unchanged
        if key.split(".")[0] in ("params", "ema", "opt_state"):
            np.testing.assert_array_equal(before[key], skipped[key], err_msg=key)
    assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))) == [1, 2, 3]


def test_full_disk_stops_with_a_clear_error_and_keeps_the_checkpoint(data_dir, tmp_path,
                                                                       monkeypatch):
    config = tiny_config(data_dir, **{"training.num_steps": 6})
    real_write = writers.MetricWriter.write

    def write(self, step, metrics):
        if step == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)
        real_write(self, step, metrics)

    monkeypatch.setattr(writers.MetricWriter, "write", write)
    workdir = str(tmp_path / "full")
    with pytest.raises(OSError, match=r"No space left on device \(while training, after step 3\); "
                       r"the last committed checkpoint is step 2") as info:
        train_run(config, workdir)
    assert info.value.errno == errno.ENOSPC
    assert checkpoint.verify_manifest(os.path.join(workdir, "checkpoints", "2"))
    assert _final_arrays(workdir, 2)["step"] == 2
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["training"]["num_steps"] == 6


# ---------------------------------------------------------------------------------------------
# Checkpoints written before the plug-in layout.


@flax.struct.dataclass
class LegacyTrainState:
    """diffjax's TrainState before plug-ins (its fields, in order)."""

    step: jax.Array
    params: object
    ema_params: object
    opt_state: object
    rng: jax.Array
    nonfinite_count: jax.Array


@flax.struct.dataclass
class LegacyMultiEMATrainState(LegacyTrainState):
    """...and its subclass for extra EMA rates (training.ema_decays)."""

    extra_ema: tuple = ()


def test_a_checkpoint_of_the_pre_plugin_layout_restores_and_resumes_exactly(data_dir, tmp_path):
    from diffjax import restore
    from diffjax.experiment import Experiment

    # No EMA warmup: with it, both rates have the same decay min(d, (1 + k) / (10 + k)) for the
    # first steps and the two EMAs could not tell their order apart.
    config = tiny_config(data_dir, **{"ema.fixed.decays": (0.999, 0.9), "ema.fixed.warmup": False,
                                      "training.checkpoint_every_steps": 2})
    straight = train_run(config, str(tmp_path / "straight"))
    at_two = restore.restore_step(Experiment(config, load_data=False), str(tmp_path / "straight"),
                                  2)  # the state of step 2 of the same run
    legacy = LegacyMultiEMATrainState(
        step=at_two.step, params=at_two.params, ema_params=at_two.ema[0],
        opt_state=at_two.opt_state, rng=at_two.rng, nonfinite_count=at_two.nonfinite_count,
        extra_ema=(at_two.ema[1],))
    workdir = str(tmp_path / "legacy")
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                    options=ocp.CheckpointManagerOptions(create=True),
                                    item_handlers=ocp.StandardCheckpointHandler())
    manager.save(2, args=ocp.args.StandardSave(legacy))
    manager.wait_until_finished()
    manager.close()
    assert "ema_params.conv_in.kernel" in _final_arrays(workdir, 2)

    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(at_two.ema[0]), jax.tree.leaves(at_two.ema[1])))
    restored, step = restore.restore_state(Experiment(config, workdir, load_data=False), workdir)
    assert step == 2
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(at_two)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    resumed = train_run(config, workdir)  # resumes from the legacy step, saves the new layout
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert "ema.1.conv_in.kernel" in _final_arrays(workdir, 4)
