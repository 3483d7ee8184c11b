"""Super-resolution conditioning (conditioning.low_res), --mode=upsample and cascades: the
resampling path against PIL and linear closed forms, CDM's conditioning augmentation, the input
channels of the U-Net and DiT, a two-stage cascade through launch.py, and the errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.conditioning import low_res
from diffjax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ramp(n, a=0.03, b=-0.05, d=0.1):
    rows, cols = np.meshgrid(np.arange(n) - (n - 1) / 2, np.arange(n) - (n - 1) / 2,
                             indexing="ij")
    return (a * cols + b * rows + d)[None, :, :, None].astype(np.float32)


def test_the_training_downsample_is_the_data_pipelines_pil_bilinear_resize():
    """A base model trains on data.image_size images (PIL's BILINEAR); the SR stage must see the
    same low-resolution image of a digit, up to uint8 rounding."""
    from diffjax import data

    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    pil = np.stack([data._resize(im, 14) for im in images]).astype(np.float32)
    ours = (np.asarray(low_res.downsample(jnp.asarray(images, jnp.float32) / 127.5 - 1, 14))
            + 1) * 127.5
    assert np.abs(ours - pil).max() <= 1.0
    assert np.abs(ours - images[:, ::2, ::2].astype(np.float32)).max() > 20  # not a subsample


def test_upsample_then_downsample_is_consistent_on_linear_images():
    """Bilinear upsampling and the antialiased downsample both reproduce a linear image away
    from the borders, so down(up(low)) = low and up(down(x)) = x there."""
    low = jnp.asarray(_ramp(14))
    round_trip = np.asarray(low_res.downsample(low_res.upsample(low, 28, 28), 14))
    np.testing.assert_allclose(round_trip[:, 2:-2, 2:-2], np.asarray(low)[:, 2:-2, 2:-2],
                               atol=1e-6)
    x = jnp.asarray(_ramp(28))
    back = np.asarray(low_res.upsample(low_res.downsample(x, 14), 28, 28))
    np.testing.assert_allclose(back[:, 3:-3, 3:-3], np.asarray(x)[:, 3:-3, 3:-3], atol=1e-6)


def test_conditioning_augmentation_at_level_zero_is_no_augmentation_and_else_has_its_level():
    batch = {"image": jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (64, 16, 16, 1)),
                                  jnp.float32)}
    clean = low_res.LowResImage(low_res.LowResOptions(size=8)).bind((16, 16, 1))
    cond = clean.train(batch, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(cond["low_res"]),
                                  np.asarray(clean.true(batch)["low_res"]))
    np.testing.assert_array_equal(np.asarray(cond["low_res_level"]), 0.0)
    noisy = low_res.LowResImage(low_res.LowResOptions(size=8, noise_max=0.5)).bind((16, 16, 1))
    cond = noisy.train(batch, jax.random.key(0))
    level = np.asarray(cond["low_res_level"])[:, 0]
    assert 0 <= level.min() and level.max() <= 0.5 and level.std() > 0.1  # U[0, 0.5]
    eps = (np.asarray(cond["low_res"]) - np.asarray(clean.true(batch)["low_res"]))
    eps = eps / level[:, None, None, None]
    assert abs(eps.std() - 1.0) < 0.03 and abs(eps.mean()) < 0.03  # N(0, level^2) noise
    table = np.asarray(clean.true(batch)["low_res"])[:5]
    sampling = clean.with_images(table).from_labels(jnp.arange(5))
    np.testing.assert_array_equal(np.asarray(sampling["low_res"]), table)


@pytest.mark.parametrize("model", ["unet", "dit"])
def test_the_network_takes_the_upsampled_image_and_level_as_input_channels(data_dir, model):
    from conftest import tiny_config

    from diffjax.experiment import Experiment

    overrides = {"conditioning.name": "low_res", "conditioning.low_res.size": 8}
    if model == "dit":
        overrides.update({"model.name": "dit", "model.dit.patch_size": 4,
                          "model.dit.hidden_size": 32, "model.dit.depth": 1,
                          "model.dit.num_heads": 2})
    exp = Experiment(tiny_config(data_dir, **overrides))
    params = jax.eval_shape(exp.network.init, jax.random.key(0))
    kernels = [leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)
               if "kernel" in jax.tree_util.keystr(path)]
    first = kernels[0] if model == "unet" else [k for k in kernels if len(k) == 4][0]
    assert first[-2] == 1 + 1 + 1  # the noisy digit, its low-resolution image and the level
    x = jnp.zeros((2, 16, 16, 1))
    maps = exp.network.maps(x, {"low_res": jnp.asarray(_ramp(8).repeat(2, 0)),
                                "low_res_level": jnp.full((2, 1), 0.3)})
    np.testing.assert_allclose(np.asarray(maps[..., 1:2]),
                               np.asarray(low_res.upsample(jnp.asarray(_ramp(8)), 16, 16))
                               .repeat(2, 0), atol=1e-6)
    np.testing.assert_allclose(np.asarray(maps[..., 2]), 0.3)


def test_bad_sizes_and_broken_cascades_fail_clearly(data_dir):
    from conftest import tiny_config

    from diffjax.cascade import check_chain
    from diffjax.experiment import Experiment

    with pytest.raises(ConfigError, match=r"low_res.size=16 is invalid: allowed 1 to 15"):
        Experiment(tiny_config(data_dir, **{"conditioning.name": "low_res",
                                            "conditioning.low_res.size": 16}))
    sr = Experiment(tiny_config(data_dir, **{"conditioning.name": "low_res",
                                             "conditioning.low_res.size": 6}))
    with pytest.raises(ConfigError, match=r"inputs of shape \(8, 8, 1\) do not fit"):
        sr.with_low_res(np.zeros((2, 8, 8, 1), np.uint8))
    base = Experiment(tiny_config(data_dir, **{"data.image_size": 8}))
    with pytest.raises(ConfigError, match="do not chain: .* makes 8x8x1 images but .* "
                                          "upsamples 6x6x1"):
        check_chain([base, sr])
    with pytest.raises(ConfigError, match="not a super-resolution model"):
        check_chain([base, base])


def _launch(*args, data_dir):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", DIFFJAX_DATA_DIR=data_dir)
    out = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_a_two_stage_cascade_and_upsample_through_launch(data_dir, tmp_path):
    """An 8x8 base and an 8 -> 16 stage, trained for 2 steps each; --mode=sample with
    sampling.cascade writes 16x16 samples, --mode=upsample upsamples a .npz of 8x8 digits and
    --mode=complete super-resolves the base's own 4x4 observations of digits."""
    tiny = ["--config.model.unet.ch_mult=(1,2)", "--config.model.unet.attn_resolutions=()",
            "--config.training.batch_size=8", "--config.training.num_steps=2",
            "--config.training.checkpoint_every_steps=2", "--config.training.sample_every_steps=0",
            "--config.sampling.num_steps=2", "--config.sampling.batch_size=4",
            "--config.sampling.num_samples=4", "--config.mesh.cpu_devices=0",
            "--config.optim.warmup_steps=1"]
    base, sr = str(tmp_path / "base"), str(tmp_path / "sr")
    _launch("--workdir", base, "--config.data.image_size=8", *tiny, data_dir=data_dir)
    _launch("--workdir", sr, "--config.data.image_size=16", "--config.conditioning.name=low_res",
            "--config.conditioning.low_res.size=8", "--config.conditioning.low_res.noise_max=0.2",
            *tiny, data_dir=data_dir)
    _launch("--workdir", sr, "--mode=sample", f"--config.sampling.cascade=('{base}',)",
            data_dir=data_dir)
    [npz] = [f for f in os.listdir(os.path.join(sr, "samples")) if f.startswith("cascade_")
             and f.endswith(".npz")]
    images = np.load(os.path.join(sr, "samples", npz))["images"]
    assert images.shape == (4, 16, 16, 1) and images.dtype == np.uint8
    # without inputs it upsamples the training split's own downsampled digits
    _launch("--workdir", sr, "--mode=sample", data_dir=data_dir)
    [plain] = [f for f in os.listdir(os.path.join(sr, "samples")) if f.startswith("samples_")
               and f.endswith(".npz")]
    assert np.load(os.path.join(sr, "samples", plain))["images"].shape == (4, 16, 16, 1)
    low = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "low.npz", images=low)
    _launch("--workdir", sr, "--mode=upsample",
            f"--config.sampling.low_res_input={tmp_path / 'low.npz'}", data_dir=data_dir)
    [out] = [f for f in os.listdir(os.path.join(sr, "upsampled")) if f.endswith(".npz")]
    assert np.load(os.path.join(sr, "upsampled", out))["images"].shape == (3, 16, 16, 1)
    # data completion with the unconditional base: 2x super-resolution of 4 of its digits
    _launch("--workdir", base, "--mode=complete", "--config.complete.num_images=4",
            "--config.complete.noise=0.1", data_dir=data_dir)
    [report] = [f for f in os.listdir(os.path.join(base, "complete")) if f.endswith(".json")]
    result = json.load(open(os.path.join(base, "complete", report)))
    assert result["task"] == "super_resolution" and len(result["per_image"]["psnr"]) == 4
    assert {"psnr", "ssim", "psnr_bilinear", "psnr_observed"} <= set(result)


def test_a_class_conditional_stage_keeps_each_inputs_class_and_guides_on_it():
    """CDM's ImageNet stages are class-conditional: sampling entry i uses its image and class,
    and guidance's null condition drops the class but keeps the image."""
    options = low_res.LowResOptions(size=4, class_conditional=True, class_dropout=0.1)
    cond = low_res.low_res(options, num_classes=10).bind((8, 8, 1))
    table = np.random.default_rng(2).uniform(-1, 1, (3, 4, 4, 1)).astype(np.float32)
    cond = cond.with_images(table, labels=[7, 2, 5])
    out = cond.from_labels(jnp.array([2, 0]))
    np.testing.assert_array_equal(np.asarray(out["label"]), [5, 7])
    np.testing.assert_array_equal(np.asarray(out["low_res"]), table[[2, 0]])
    null = cond.null(out)
    np.testing.assert_array_equal(np.asarray(null["label"]), [10, 10])
    np.testing.assert_array_equal(np.asarray(null["low_res"]), table[[2, 0]])
    with pytest.raises(ConfigError, match="3 low-resolution inputs need as many class labels"):
        cond.with_images(table, labels=[1, 2])
