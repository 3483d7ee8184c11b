"""Latent diffusion: the KL posterior, the autoencoder stage, the vae / sd_vae codecs, the latent
cache and the two-stage run through launch.py, with the bad inputs each refuses."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, set_field, tiny_config

from diffjax.core import posterior
from diffjax.errors import ConfigError

# A 16x16x1 autoencoder with f = 2 (8x8x2 latents), small enough to compile in seconds.
TINY_AE = {"autoencoder.block_out_channels": (8, 16), "autoencoder.layers_per_block": 1,
           "autoencoder.latent_channels": 2, "autoencoder.norm_num_groups": 8,
           "autoencoder.disc_layers": 1, "autoencoder.disc_channels": 8,
           "autoencoder.disc_start_step": 1, "autoencoder.split": "train[:90%]",
           "autoencoder.eval_split": "train[90%:]", "autoencoder.eval_num_images": 16,
           "autoencoder.stats_num_images": 256, "autoencoder.num_steps": 3}


def _ae_config(data_dir, **overrides):
    return tiny_config(data_dir, **{**TINY_AE, **overrides})


@pytest.fixture(scope="module")
def trained_ae(data_dir, tmp_path_factory):
    """A workdir of --mode=train_autoencoder (3 steps, the discriminator on from step 1)."""
    from diffjax.autoencoder_stage import AutoencoderStage
    from diffjax.training import loop

    workdir = str(tmp_path_factory.mktemp("ae"))
    stage = AutoencoderStage(_ae_config(data_dir), workdir)
    state = loop.train(stage)
    stage.export(state)
    return workdir, stage, state


def _latent_config(data_dir, ae_dir, **overrides):
    return tiny_config(data_dir, **{"codec.name": "vae", "codec.vae.path": ae_dir, **overrides})


def test_kl_matches_torch_distributions():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    mean, logvar = rng.normal(size=(3, 4, 4, 2)), rng.normal(size=(3, 4, 4, 2))
    ours = posterior.kl_to_standard_normal(jnp.asarray(mean, jnp.float32),
                                           jnp.asarray(logvar, jnp.float32))
    q = torch.distributions.Normal(torch.tensor(mean), torch.tensor(np.exp(0.5 * logvar)))
    p = torch.distributions.Normal(torch.zeros(1, dtype=torch.float64),
                                   torch.ones(1, dtype=torch.float64))
    theirs = torch.distributions.kl_divergence(q, p).sum(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-5)


def test_posterior_samples_have_the_posterior_mean_and_variance():
    mean = jnp.asarray([[[[0.5, -2.0]]]])
    logvar = jnp.log(jnp.asarray([[[[0.25, 4.0]]]]))
    mean_b, logvar_b = (jnp.broadcast_to(a, (20000, 1, 1, 2)) for a in (mean, logvar))
    z = np.asarray(posterior.sample(mean_b, logvar_b, jax.random.PRNGKey(0)))
    np.testing.assert_allclose(z.mean(axis=0).ravel(), [0.5, -2.0], atol=0.04)
    np.testing.assert_allclose(z.var(axis=0).ravel(), [0.25, 4.0], rtol=0.05)
    moments = jnp.concatenate([mean, jnp.full_like(mean, 50.0)], axis=-1)
    assert float(posterior.split_moments(moments)[1].max()) == 20.0  # LDM's clamp


def test_gradients_flow_through_the_encoder(trained_ae):
    """The autodiff derivative of the autoencoder loss (reconstruction + KL; before the
    discriminator starts, whose adaptive weight is deliberately not differentiated) along a
    random direction of the encoder's weights equals the central finite difference."""
    _, stage, state = trained_ae
    objective = stage.objective
    params = {"network": state.params, **state.objective.params}
    batch = stage.pipeline.batch(0)
    step = jnp.int32(0)  # < disc_start_step
    inputs = objective.prepare(jnp.asarray(batch["image"]), {}, jax.random.PRNGKey(1), step)
    loss = lambda p: objective.loss(p, None, inputs, {}, step)[0]  # noqa: E731
    grads = jax.grad(loss)(params)["network"]["encoder"]
    keys = jax.random.split(jax.random.PRNGKey(2), len(jax.tree.leaves(grads)))
    direction = jax.tree.unflatten(jax.tree.structure(grads), [
        jax.random.normal(k, g.shape) for k, g in zip(keys, jax.tree.leaves(grads))])
    along = sum(float(jnp.vdot(g, v)) for g, v in zip(jax.tree.leaves(grads),
                                                       jax.tree.leaves(direction)))
    h = 1e-3

    def shifted(sign):
        encoder = jax.tree.map(lambda p, v: p + sign * h * v, params["network"]["encoder"],
                               direction)
        return float(loss({**params, "network": {**params["network"], "encoder": encoder}}))

    finite = (shifted(1) - shifted(-1)) / (2 * h)
    assert abs(along) > 1e-3
    assert abs(finite - along) < 0.03 * abs(along)


def test_adaptive_weight_is_ldms_gradient_norm_ratio():
    from diffjax.objectives.autoencoder import adaptive_weight, hinge_d_loss

    g_rec, g_gan = {"w": jnp.full((3,), 2.0)}, {"w": jnp.full((3,), 0.5)}
    ratio = np.sqrt(12.0) / (np.sqrt(0.75) + 1e-4)
    assert float(adaptive_weight(g_rec, g_gan, 0.5)) == pytest.approx(0.5 * ratio, rel=1e-6)
    assert float(adaptive_weight(g_rec, {"w": jnp.zeros(3)}, 1.0)) == pytest.approx(1e4)
    real, fake = jnp.asarray([2.0, 0.5]), jnp.asarray([-3.0, 0.0])
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * (0.25 + 0.5))


def test_autoencoder_run_writes_grids_eval_and_an_export_diffusers_loads(trained_ae):
    workdir, stage, state = trained_ae
    from diffjax.modes.train_autoencoder import evaluate_reconstructions

    assert int(state.step) == 3
    assert os.path.isfile(os.path.join(workdir, "samples", "grid_00000003.png"))
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert {"rec_loss_per_pixel", "kl", "d_loss", "g_loss", "d_weight"} <= set(metrics[-1])
    folder = os.path.join(workdir, "autoencoder")
    stats = json.load(open(os.path.join(folder, "diffjax_latent_stats.json")))
    assert stats["image_shape"] == [16, 16, 1] and stats["latent_shape"] == [8, 8, 2]
    result = evaluate_reconstructions(stage, stage.export_params(state), 3)
    assert result["num_images"] == 16 and 0 < result["psnr_db"] < 60 and "rfid_16" in result
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    vae = diffusers.AutoencoderKL.from_pretrained(folder)
    images = np.asarray(stage.pipeline.batch(0)["image"][:2])
    from diffjax.codecs import make_codec
    from diffjax.codecs.vae import VaeOptions

    codec = make_codec("vae", VaeOptions(path=workdir, latent="mean"), (16, 16, 1))
    ours = np.asarray(codec.moments(codec.params, jnp.asarray(images)))[..., :2]
    with torch.no_grad():
        theirs = vae.encode(torch.tensor(images).permute(0, 3, 1, 2)).latent_dist.mean
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("normalization", ["std", "channel"])
def test_the_normalisation_brings_latents_to_unit_variance(trained_ae, normalization):
    """Latents of the training images, encoded with a key the statistics never saw, have std 1
    (and, per channel, mean 0) after the measured normalisation."""
    from diffjax.codecs import make_codec
    from diffjax.codecs.vae import VaeOptions

    workdir, stage, _ = trained_ae
    codec = make_codec("vae", VaeOptions(path=workdir, normalization=normalization),
                       (16, 16, 1))
    images, _ = stage.pipeline.examples(np.arange(256))
    x = np.asarray(codec.encode(codec.params, jnp.asarray(images / 127.5 - 1.0, jnp.float32),
                                jax.random.PRNGKey(123)), np.float64)
    raw = np.asarray(codec.moments(codec.params, jnp.asarray(images / 127.5 - 1.0,
                                                             jnp.float32)))[..., :2]
    assert abs(raw.std() - 1.0) > 0.2  # the posterior means before normalisation
    if normalization == "std":
        assert x.std() == pytest.approx(1.0, rel=0.03)
    else:
        per_channel = x.reshape(-1, x.shape[-1])
        np.testing.assert_allclose(per_channel.std(0), 1.0, rtol=0.03)
        np.testing.assert_allclose(per_channel.mean(0), 0.0, atol=0.04)


def test_sd_normalisation_is_the_folders_scaling_factor(trained_ae):
    from diffjax.codecs import make_codec
    from diffjax.codecs.vae import VaeOptions

    workdir, _, _ = trained_ae
    codec = make_codec("vae", VaeOptions(path=workdir, normalization="config"), (16, 16, 1))
    np.testing.assert_array_equal(codec.scale, np.float32(0.18215))
    manual = make_codec("vae", VaeOptions(path=workdir, normalization="manual", scale=0.5,
                                          shift=0.25), (16, 16, 1))
    z = jnp.full((1, 8, 8, 2), 1.25)
    np.testing.assert_allclose(np.asarray(manual.decode(manual.params, (z - 0.25) * 0.5)),
                               np.asarray(codec.decode(codec.params, z * np.float32(0.18215))),
                               atol=1e-6)


def _train_params(config, steps: int):
    from diffjax.experiment import Experiment

    exp = Experiment(config)
    state, step_fn = exp.init_state(), exp.train_step_fn()
    for k in range(steps):
        state, _ = step_fn(state, exp.global_batch(k))
    return exp, jax.device_get(state.params)


def test_the_latent_cache_trains_bit_identically_to_encoding_every_step(trained_ae, data_dir,
                                                                        tmp_path):
    workdir, _, _ = trained_ae
    common = {"data.random_flip": True, "mesh.num_devices": 2, "codec.vae.cache_dir":
              str(tmp_path / "cache")}
    on_the_fly, params_a = _train_params(_latent_config(data_dir, workdir, **common), 3)
    cached, params_b = _train_params(
        _latent_config(data_dir, workdir, **common, **{"codec.vae.cache": True}), 3)
    assert "latent_moments" in cached.pipeline.batch(0)
    assert "latent_moments" not in on_the_fly.pipeline.batch(0)
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_array_equal(a, b)
    # Flipped examples read the flipped image's moments.
    table = np.asarray(cached.pipeline.table)
    assert table.shape[1] == 2 and not np.array_equal(table[:, 0], table[:, 1])


def test_the_cache_is_rebuilt_when_the_autoencoder_changes(trained_ae, data_dir, tmp_path):
    from diffjax import latent_cache
    from diffjax.experiment import Experiment
    from diffjax.models.diffusers_io import load_diffusers_autoencoder, save_diffusers_autoencoder

    workdir, _, _ = trained_ae
    other = str(tmp_path / "other_ae")
    config, params = load_diffusers_autoencoder(os.path.join(workdir, "autoencoder"))
    params = jax.tree.map(lambda p: p * 1.01, params)
    save_diffusers_autoencoder(other, config, params)
    cache = str(tmp_path / "cache")
    first = Experiment(_latent_config(data_dir, workdir, **{"codec.vae.cache": True,
                                                            "codec.vae.cache_dir": cache}))
    again = Experiment(_latent_config(data_dir, workdir, **{"codec.vae.cache": True,
                                                            "codec.vae.cache_dir": cache}))
    changed = Experiment(_latent_config(data_dir, other, **{"codec.vae.cache": True,
                                                            "codec.vae.cache_dir": cache}))
    assert len(os.listdir(cache)) == 2  # the same autoencoder reused its cache
    key = lambda e: latent_cache.cache_key(e.codec, e.data, e.pipeline.pipeline, 1)  # noqa: E731
    assert key(first) == key(again) != key(changed)
    assert not np.array_equal(np.asarray(first.pipeline.table),
                              np.asarray(changed.pipeline.table))


def test_bad_autoencoder_paths_and_shapes_fail_clearly(trained_ae, data_dir, tmp_path):
    from diffjax.experiment import validate

    workdir, _, _ = trained_ae
    with pytest.raises(ConfigError, match="codec.vae.path=.* does not exist: expected a "
                                          "diffusers AutoencoderKL folder"):
        validate(_latent_config(data_dir, str(tmp_path / "nothing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no autoencoder"):
        validate(_latent_config(data_dir, str(tmp_path / "empty")))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="without an exported autoencoder"):
        validate(_latent_config(data_dir, str(tmp_path / "run")))
    with pytest.raises(ConfigError, match=r"trained on images of shape \(16, 16, 1\), but the "
                                          r"data's are \(24, 24, 1\)"):
        validate(_latent_config(data_dir, workdir, **{"data.image_size": 24}))
    with pytest.raises(ConfigError, match=r"ch_mult.*x has shape \(8, 8, 2\)"):
        validate(_latent_config(data_dir, workdir, **{"model.unet.ch_mult": (1, 1, 1, 1, 1)}))
    with pytest.raises(ConfigError, match="codec.vae.path='' is invalid"):
        validate(_latent_config(data_dir, ""))
    from diffjax.codecs import make_codec
    from diffjax.codecs.vae import SdVaeOptions

    with pytest.raises(ConfigError, match="takes 3-channel images, but the data's have 1"):
        make_codec("sd_vae", SdVaeOptions(), (256, 256, 1))
    with pytest.raises(ConfigError, match="f=8, which must divide the image size 100x100"):
        make_codec("sd_vae", SdVaeOptions(), (100, 100, 3))
    codec = make_codec("sd_vae", SdVaeOptions(), (256, 256, 3))
    assert codec.x_shape((256, 256, 3)) == (32, 32, 4)
    with pytest.raises(ConfigError, match="codec.sd_vae.path='' names no weights"):
        codec.decode(codec.params, jnp.zeros((1, 32, 32, 4)))
    with pytest.raises(ConfigError, match="cannot take inpainting masks"):
        codec.encode_mask(np.ones((1, 256, 256, 1)))


def test_the_sd_vae_recipes_validate_with_the_papers_counts(tmp_path):
    """SiT-XL/2 and DiT-XL/2 on SD-VAE latents (32x32x4): 675,129,632 params each as DiT and
    SiT count them (DiT Table 4's 118.6 Gflops)."""
    from test_configs import _load

    from diffjax.experiment import validate

    for name in ("imagenet256_sit_xl2.py", "imagenet256_dit_xl2.py"):
        config = _load(name).get_config()
        config.data.data_dir = str(tmp_path)
        exp = validate(config, devices=False)
        assert exp.x_shape == (32, 32, 4) and exp.codec.name == "sd_vae"
        assert exp.num_params() + exp.network.num_fixed_scalars == 675_129_632
        np.testing.assert_array_equal(exp.codec.scale, np.float32(0.18215))


def _launch(*args, data_dir):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", DIFFJAX_DATA_DIR=data_dir)
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], env=env,
                          capture_output=True, text=True, timeout=900)


def _flags(overrides: dict) -> list[str]:
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def test_two_stages_through_launch_then_roundtrip(data_dir, tmp_path, capsys):
    tiny = {"data.image_size": 16, "model.unet.ch_mult": "(1,2)",
            "model.unet.attn_resolutions": "(4,)", "training.batch_size": 8,
            "training.checkpoint_every_steps": 2, "training.sample_every_steps": 2,
            "sampling.num_steps": 3, "sampling.grid_samples": 4, "sampling.num_samples": 4,
            "sampling.batch_size": 4, "mesh.cpu_devices": 2, "optim.warmup_steps": 1}
    ae_flags = {**{k: str(v).replace(" ", "") for k, v in TINY_AE.items()},
                "autoencoder.num_steps": 2}
    ae_dir, ldm_dir = str(tmp_path / "ae"), str(tmp_path / "ldm")
    recipe = os.path.join(ROOT, "configs", "mnist_latent.py")
    first = _launch("--config", recipe, "--mode=train_autoencoder", "--workdir", ae_dir,
                    *_flags({**tiny, **ae_flags}), data_dir=data_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "held-out reconstructions (train[90%:], 16 images): PSNR" in first.stdout
    second = _launch("--config", recipe, "--workdir", ldm_dir, f"--config.codec.vae.path={ae_dir}",
                     "--config.training.num_steps=2", f"--config.codec.vae.cache_dir={tmp_path}/c",
                     *_flags(tiny), data_dir=data_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "latent cache: encoded the training split" in second.stdout
    from PIL import Image

    # The sampler's grid holds decoded images (16x16x1), not latents (8x8x2).
    grid = np.asarray(Image.open(os.path.join(ldm_dir, "samples", "grid_00000002.png")))
    assert grid.shape == (2 * 18 + 2, 2 * 18 + 2)  # a 2x2 grid of 16x16 images, padding 2
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 1), dtype=np.uint8)
    np.savez(tmp_path / "in.npz", images=images)
    from diffjax.codecs.__main__ import main

    assert main(["roundtrip", "--codec", "vae", "--path", ae_dir, str(tmp_path / "in.npz"),
                 str(tmp_path / "out.npz")]) == 0
    assert "4 images through vae: PSNR" in capsys.readouterr().out
    assert np.load(tmp_path / "out.npz")["images"].shape == (4, 16, 16, 1)


def test_roundtrip_through_pixels_is_exact_and_psnr_is_the_closed_form(tmp_path):
    from diffjax.codecs.__main__ import main

    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "in.npz", images=images)
    assert main(["roundtrip", "--codec", "pixels", str(tmp_path / "in.npz"),
                 str(tmp_path / "out.npz")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npz")["images"], images)
    from diffjax.evaluation import image_quality

    noisy = np.clip(images.astype(int) + 10, 0, 255).astype(np.uint8)
    mse = ((noisy.astype(float) - images) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(image_quality.psnr(noisy, images),
                               10 * np.log10(255.0**2 / mse), rtol=1e-4)


def test_inpainting_a_latent_model_is_refused(trained_ae, data_dir):
    from diffjax.experiment import validate

    workdir, _, _ = trained_ae
    exp = validate(_latent_config(data_dir, workdir))
    with pytest.raises(ConfigError, match="config.codec.name='vae' cannot take inpainting"):
        exp.codec.encode_mask(np.ones((1, 16, 16, 1), np.float32))


def test_a_typo_in_the_autoencoder_section_fails_at_start_up(data_dir):
    from diffjax.experiment import validate

    config = tiny_config(data_dir)
    set_field(config, "autoencoder.reconstruction", "l3")
    with pytest.raises(ConfigError, match=r"config.autoencoder.reconstruction='l3' is unknown"):
        validate(config)
