"""Bad input fails at start-up, before anything compiles, with a message naming the key, the
value and what is allowed, and no traceback."""

import json
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
    (["--config.model.unet.ch_mult=abc"], "config.model.unet.ch_mult=('abc',) must be a tuple or "
     "list of ints"),
    (["--config.model.ch=64"], "config.model has no field 'ch'; its fields are: dit, edm2, name, "
     "unet. It was renamed when parts became plug-ins: use config.model.unet.ch"),
    (["--config.diffusion.schedule=cosinee"], "config.diffusion.schedule='cosinee' is unknown; "
     "allowed: linear, cosine, sigmoid, vp_linear, vp_cosine, ve, edm"),
    (["--config.diffusion.parameterization=score"], "config.diffusion.parameterization='score' "
     "is unknown; allowed: eps, x0, v"),
    (["--config.objective.denoising.weighting=p3"], "config.objective.denoising.weighting='p3' "
     "is unknown; allowed: simple"),
    (["--config.objective.denoising.time_sampling=beta"], "config.objective.denoising."
     "time_sampling='beta' is unknown; allowed: uniform, lognormal"),
    (["--config.objective.name=score"], "config.objective.name='score' is unknown; allowed: "
     "consistency_training, consistency_distillation, ddgan, denoising"),
    (["--config.sampling.sampler=heunn"], "config.sampling.sampler='heunn' is unknown; allowed: "
     "ddpm, ddim"),
    (["--config.sampling.sampler=heun", "--config.sampling.heun.s_churn=-1.0"],
     "config.sampling.heun.s_churn=-1.0 is invalid: must be >= 0"),
    (["--config.sampling.ode.solver=rk45"], "config.sampling.ode.solver='rk45' is unknown; "
     "allowed: tsit5"),
    (["--config.codec.name=vqgan"], "config.codec.name='vqgan' is unknown; allowed: pixels, "
     "vae, sd_vae"),
    (["--config.codec.name=vae"], "config.codec.vae.path='' is invalid: name a diffusers "
     "AutoencoderKL folder"),
    (["--config.conditioning.name=class_label", "--config.conditioning.class_label.dropout=1.5"],
     "config.conditioning.class_label.dropout=1.5 is invalid: must be in [0, 1)"),
    (["--config.eval.metrics=('fid','fd_dino')"], "config.eval.metrics='fd_dino' is unknown; "
     "allowed: fid, kid, inception_score, precision_recall, copy_rate, digit_classes"),
    (["--config.sampling.spacing=log"], "config.sampling.spacing='log' is unknown; allowed: "
     "uniform"),
    (["--config.optim.name=sgdd"], "config.optim.name='sgdd' is unknown; allowed: adam, adamw"),
    (["--config.data.image_size=30"], "input size 30 (x has shape (30, 30, 1), the codec's "
     "space) would give level sizes 30 -> 15 -> 7.5"),
    (["--config.model.unet.attn_resolutions=(5,)"], "config.model.unet.attn_resolutions=(5,) is "
     "invalid: contains 5, which never occurs for 28x28 images with ch_mult=(1, 2, 2); the level "
     "resolutions are [28, 14, 7]"),
    (["--config.training.batch_size=6", "--config.mesh.cpu_devices=4"],
     "config.training.batch_size=6 does not divide over 4 devices; use a multiple of 4"),
    (["--config.mesh.num_devices=16", "--config.mesh.cpu_devices=2"],
     "config.mesh.num_devices=16: 2 devices are available"),
    (["--config.optim.lr=-1.0"], "config.optim.lr=-1.0 is invalid: must be > 0"),
    (["--config.optim.weight_decay=0.01"], "config.optim.weight_decay=0.01 is applied only by "
     "optim.name='adamw' (decoupled decay), not by 'adam'; use adamw or set weight_decay=0"),
    (["--config.ema.fixed.decays=(1.0,)"], "config.ema.fixed.decays=(1.0,) is invalid: must be "
     "a non-empty tuple of floats in [0, 1)"),
    (["--config.model.unet.ch=40"], "config.model.unet.ch=40 is invalid: must be a positive "
     "multiple of 32"),
    (["--config.model.unet.num_heads=3"], "config.model.unet.num_heads=3 is invalid: does not "
     "divide the 64 channels"),
    (["--config.model.unet.dropout=1.5"], "config.model.unet.dropout=1.5 is invalid: must be in "
     "[0, 1)"),
    (["--config.sampling.num_steps=2000"], "config.sampling.num_steps=2000 is invalid: must be "
     "<= the schedule's num_timesteps=1000"),
    (["--config.diffusion.linear.beta_end=2.0"], "config.diffusion.linear.beta_start=0.0001 is "
     "invalid: need 0 < beta_start < beta_end (=2.0) < 1"),
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
    saved = {"model": {"name": "unet", "unet": {"ch": 64, "ch_mult": [1, 2]}},
             "sampling": {"num_steps": 100}, "training": {"retired_field": 1}}
    merged = config_lib.merge_saved(config, saved, overridden={"sampling.num_steps"})
    assert merged.model.unet.ch == 64 and merged.model.unet.ch_mult == (1, 2)
    assert merged.sampling.num_steps == 7  # the command line wins
    assert "retired_field" not in merged.training
    assert merged.model.unet.num_res_blocks == config.model.unet.num_res_blocks


LEGACY_DIR = os.path.join(ROOT, "tests", "data", "legacy_configs")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


# Recipes whose values changed on purpose after their legacy config.json was written.
RECIPE_CHANGES = {
    "cifar10_iddpm": {"sampling.ddpm.variance": "learned"},  # iDDPM's L_hybrid
    # issue 17's main job (experiments/sweeps/mnist_main_job.py); configs/mnist_ddpm.py keeps
    # the old recipe
    "default": {"diffusion.schedule": "cosine", "diffusion.parameterization": "v",
                "training.batch_size": 32, "training.num_steps": 1100,
                "optim.warmup_steps": 40, "training.checkpoint_every_steps": 550,
                "training.sample_every_steps": 0},
}


@pytest.mark.parametrize("recipe", sorted(f[:-5] for f in os.listdir(LEGACY_DIR)))
def test_a_pre_plugin_config_json_migrates_to_the_same_recipe(recipe):
    """tests/data/legacy_configs/*.json are the config.json files the code before the plug-in
    layout wrote for each recipe. Migrated, every old value lands in a current field, and the
    result is exactly today's recipe, less the changes RECIPE_CHANGES names."""
    with open(os.path.join(LEGACY_DIR, recipe + ".json")) as f:
        legacy = json.load(f)
    assert config_lib.is_legacy(legacy)
    current = config_lib.load_config_file(os.path.join(ROOT, "configs", recipe + ".py"))
    migrated = _flat(config_lib.migrate_legacy(legacy))
    migrated.update(RECIPE_CHANGES.get(recipe, {}))
    now = _flat(json.loads(json.dumps(current.to_dict(), default=list)))
    assert set(migrated) <= set(now), sorted(set(migrated) - set(now))  # nothing dropped
    assert {k: v for k, v in now.items() if k in migrated} == migrated


def test_migration_moves_non_default_values_to_their_new_keys():
    with open(os.path.join(LEGACY_DIR, "default.json")) as f:
        legacy = json.load(f)
    legacy["model"].update(ch=64, class_conditional=True, class_dropout=0.1)
    legacy["diffusion"].update(num_timesteps=500, sigma_max=50.0, weighting="min_snr")  # linear
    legacy["training"].update(ema_decay=0.99, ema_decays=[0.9])
    legacy["sampling"].update(s_churn=3.0, ddpm_variance="large", ode_rtol=1e-3)
    legacy["eval"].update(precision_recall=True, inception_score=False, kid_subsets=7)
    from configs import default

    merged = config_lib.merge_saved(default.get_config(), legacy, overridden=set())
    assert merged.model.unet.ch == 64
    assert merged.conditioning.name == "class_label"
    assert merged.conditioning.class_label.dropout == 0.1
    assert merged.diffusion.linear.num_timesteps == 500
    # Options of schedules the run did not use were never read: they stay at today's defaults.
    assert merged.diffusion.cosine.num_timesteps == 1000 and merged.diffusion.edm.sigma_max == 80
    legacy["diffusion"]["schedule"] = "edm"
    merged = config_lib.merge_saved(default.get_config(), legacy, overridden=set())
    assert merged.diffusion.edm.sigma_max == 50.0 and merged.diffusion.ve.sigma_max == 80.0
    assert merged.objective.denoising.weighting == "min_snr"
    assert merged.ema.fixed.decays == (0.99, 0.9)
    assert merged.sampling.euler.s_churn == merged.sampling.heun.s_churn == 3.0
    assert merged.sampling.ddpm.variance == "large" and merged.sampling.ode.rtol == 1e-3
    assert merged.eval.metrics == ("fid", "kid", "precision_recall")
    assert merged.eval.kid.subsets == 7


def test_cpu_devices_the_started_backend_lacks_are_warned_about(data_dir, caplog):
    import jax
    from conftest import tiny_config

    from diffjax.experiment import Experiment

    have = jax.local_device_count()
    with caplog.at_level("WARNING"):
        Experiment(tiny_config(data_dir, **{"mesh.cpu_devices": have}), load_data=False)
    assert "cpu_devices" not in caplog.text
    with caplog.at_level("WARNING"):
        Experiment(tiny_config(data_dir, **{"mesh.cpu_devices": have + 1}), load_data=False)
    assert f"cpu_devices={have + 1}, but the CPU backend has {have} device(s)" in caplog.text
