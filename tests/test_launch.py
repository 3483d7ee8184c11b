"""launch.py end to end in subprocesses: train, resume, sample, dry_run and start-up errors."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.data.image_size=16", "--config.model.unet.ch_mult=(1,2)",
        "--config.model.unet.attn_resolutions=(8,)",
        "--config.training.batch_size=8", "--config.training.log_every_steps=1",
        "--config.training.checkpoint_every_steps=2", "--config.training.sample_every_steps=0",
        "--config.sampling.num_steps=3", "--config.sampling.grid_samples=4",
        "--config.sampling.num_samples=6", "--config.sampling.batch_size=4",
        "--config.mesh.cpu_devices=2", "--config.optim.warmup_steps=2"]


def launch(*args, data_dir=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    if data_dir:
        env["DIFFJAX_DATA_DIR"] = data_dir
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_train_then_resume_then_sample(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    first = launch("--workdir", workdir, "--config.training.num_steps=2", *TINY, data_dir=data_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch("--workdir", workdir, "--config.training.num_steps=4", *TINY, data_dir=data_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from checkpoint step 2" in second.stdout

    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["training"]["num_steps"] == 4
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all({"step", "loss", "grad_norm", "lr"} <= set(r) for r in records)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    assert os.path.exists(os.path.join(workdir, "loss_curve.png"))
    assert os.path.exists(os.path.join(workdir, "samples", "grid_00000004.png"))
    assert any(f.startswith("events.out.tfevents")
               for f in os.listdir(os.path.join(workdir, "tensorboard")))

    # Sampling reads the run's config.json: no need to repeat the training overrides.
    sample = launch("--workdir", workdir, "--mode=sample", data_dir=data_dir)
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert f"using the run's config {workdir}/config.json" in sample.stdout
    npz = os.path.join(workdir, "samples", "samples_step4_ddpm3_seed0.npz")
    images = np.load(npz)["images"]
    assert images.shape == (6, 16, 16, 1) and images.dtype == np.uint8
    assert os.path.exists(npz.replace(".npz", ".png"))


def test_dry_run_prints_params_without_data(tmp_path):
    out = launch("--mode=dry_run", f"--config={ROOT}/configs/cifar10_ddpm.py",
                 f"--config.data.data_dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "params: 35746307" in out.stdout
