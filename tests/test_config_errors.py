"""Bad input fails at start-up, before anything compiles, with a message naming the key, the
value and what is allowed, and no traceback."""

import os
import subprocess
import sys

import numpy as np
import pytest

from diffjax import config_lib, data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BAD_CONFIGS = [
    (["--config.optim.lrr=1"], "unknown config key config.optim.lrr: config.optim has no field "
     "'lrr'; its fields are: b1, b2, decay"),
    (["--config.optimizer.lr=1"], "config has no field 'optimizer'"),
    (["--config.training.batch_size=abc"], "--config.training.batch_size=abc: invalid literal "
     "for int()"),
    (["--config.model.ch_mult=abc"], "config.model.ch_mult=('abc',) must be a tuple or list of "
     "ints"),
    (["--config.diffusion.schedule=cosinee"], "config.diffusion.schedule='cosinee' is unknown; "
     "allowed: linear, cosine, sigmoid, vp_linear, vp_cosine, ve, edm"),
    (["--config.diffusion.parameterization=score"], "config.diffusion.parameterization='score' "
     "is unknown; allowed: eps, x0, v"),
    (["--config.diffusion.weighting=p3"], "config.diffusion.weighting='p3' is unknown; allowed: "
     "simple"),
    (["--config.diffusion.time_sampling=beta"], "config.diffusion.time_sampling='beta' is "
     "unknown; allowed: uniform, lognormal"),
    (["--config.sampling.sampler=heunn"], "config.sampling.sampler='heunn' is unknown; allowed: "
     "ddpm, ddim"),
    (["--config.sampling.spacing=log"], "config.sampling.spacing='log' is unknown; allowed: "
     "uniform"),
    (["--config.optim.name=sgdd"], "config.optim.name='sgdd' is unknown; allowed: adam, adamw"),
    (["--config.data.image_size=30"], "image size 30 would give level sizes 30 -> 15 -> 7.5"),
    (["--config.model.attn_resolutions=(5,)"], "config.model.attn_resolutions=(5,) contains 5, "
     "which never occurs for 28x28 images with ch_mult=(1, 2, 2); the level resolutions are "
     "[28, 14, 7]"),
    (["--config.training.batch_size=6", "--config.mesh.cpu_devices=4"],
     "config.training.batch_size=6 does not divide over 4 devices; use a multiple of 4"),
    (["--config.mesh.num_devices=16", "--config.mesh.cpu_devices=2"],
     "config.mesh.num_devices=16: 2 devices are available"),
    (["--config.optim.lr=-1.0"], "config.optim.lr=-1.0 is invalid: must be > 0"),
    (["--config.training.ema_decay=1.0"], "config.training.ema_decay=1.0 is invalid: must be in "
     "[0, 1)"),
    (["--config.model.ch=40"], "config.model.ch=40 must be a positive multiple of 32"),
    (["--config.model.num_heads=3"], "config.model.num_heads=3 does not divide the 64 channels"),
    (["--config.model.dropout=1.5"], "config.model.dropout=1.5 must be in [0, 1)"),
    (["--config.sampling.num_steps=2000"], "config.sampling.num_steps=2000 is invalid: must be "
     "<= diffusion.num_timesteps=1000"),
    (["--config.diffusion.beta_end=2.0"], "config.diffusion.beta_start=0.0001 is invalid: need 0 "
     "< beta_start < beta_end (=2.0) < 1"),
    (["--config.training.max_nonfinite_steps=0"], "config.training.max_nonfinite_steps=0 is "
     "invalid: must be >= 1"),
    (["--config.data.name=no_such_set"], "config.data.name='no_such_set' is not a TFDS dataset"),
    (["--config.model.name=transformer"], "config.model.name='transformer' is unknown"),
]


def _launch(*args, data_dir):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", DIFFJAX_DATA_DIR=data_dir)
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", BAD_CONFIGS, ids=[a[0] for a, _ in BAD_CONFIGS])
def test_bad_config_fails_at_start_up_with_a_clear_message(args, message, tmp_path):
    out = _launch("--mode=dry_run", *args, data_dir=str(tmp_path))
    assert out.returncode in (1, 2)  # 1: absl's flag parser (types), 2: diffjax's validation
    assert message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_missing_dataset_names_the_command_that_prepares_it(tmp_path):
    out = _launch("--workdir", str(tmp_path / "run"), "--config.data.name=cifar10",
                  data_dir=str(tmp_path))
    assert out.returncode == 2
    assert "dataset 'cifar10' is not prepared" in out.stderr
    assert "python -m diffjax.data prepare --name cifar10" in out.stderr
    assert "Traceback" not in out.stderr


def test_sampling_a_workdir_without_checkpoints_says_train_first(tmp_path):
    out = _launch("--mode=sample", "--workdir", str(tmp_path / "nothing"), data_dir=str(tmp_path))
    assert out.returncode == 2
    assert "no checkpoints in" in out.stderr and "train first" in out.stderr


class _Source:
    """A random-access source of fixed examples, like tfds.data_source."""

    def __init__(self, image):
        self.image = image

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return {"image": self.image, "label": 0}


@pytest.mark.parametrize("shape, pattern", [
    ((4, 28, 28, 1), r"got shape \(4, 28, 28, 1\)"),
    ((28, 28, 2), r"C in \(1, 3\); got shape \(28, 28, 2\)"),
    ((28, 28, 4), r"got shape \(28, 28, 4\)")])
def test_images_of_the_wrong_rank_or_channels_are_rejected(shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        data.Pipeline(_Source(np.zeros(shape, np.uint8)), global_batch=2, seed=0)


def test_merge_saved_config_keeps_the_runs_values_under_new_overrides():
    from configs import default

    config = default.get_config()
    config.sampling.num_steps = 7
    saved = {"model": {"ch": 64, "ch_mult": [1, 2]}, "sampling": {"num_steps": 100},
             "training": {"retired_field": 1}}
    merged = config_lib.merge_saved(config, saved, overridden={"sampling.num_steps"})
    assert merged.model.ch == 64 and merged.model.ch_mult == (1, 2)
    assert merged.sampling.num_steps == 7  # the command line wins
    assert "retired_field" not in merged.training
    assert merged.model.num_res_blocks == config.model.num_res_blocks
