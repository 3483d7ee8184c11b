"""diffjax's AutoencoderKL against diffusers' PyTorch AutoencoderKL (the Stable Diffusion VAE):
the same weights, loaded from and saved to diffusers' folder format, give the same numbers."""

import json
import os
import re
import shutil

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

import jax  # noqa: E402
import safetensors.numpy  # noqa: E402
import safetensors.torch  # noqa: E402

from diffjax.errors import ConfigError  # noqa: E402
from diffjax.models import count_params  # noqa: E402
from diffjax.models.autoencoder import (  # noqa: E402
    SD_VAE_CONFIG,
    AutoencoderConfig,
    AutoencoderKL,
    init_params,
)
from diffjax.models.diffusers_io import (  # noqa: E402
    is_diffusers_autoencoder,
    load_diffusers_autoencoder,
    save_diffusers_autoencoder,
)

SD_VAE_NUM_PARAMS = 83_653_863  # diffusers' AutoencoderKL.from_config(SD_VAE_CONFIG)
SMALL_CONFIG = {
    "_class_name": "AutoencoderKL",
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "layers_per_block": 1,
    "latent_channels": 2,
    "norm_num_groups": 8,
    "in_channels": 1,
    "out_channels": 1,
    "sample_size": 16,
}
# float32 on CPU agrees to ~1e-6 (||ours - ref|| / ||ref||). The norm bound is tighter than
# 1e-4 because a GroupNorm eps of 1e-5 instead of diffusers' 1e-6 moves outputs by only 2e-5 to
# 7e-5 relative on these inputs; the max-error bound is the looser 1e-4.
RELATIVE_TOLERANCE = 2e-5
MAX_ERROR_TOLERANCE = 1e-4
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _torch_vae(config: dict, seed: int = 0):
    """diffusers' AutoencoderKL with seeded random weights; GroupNorm scales and all biases
    perturbed so that they are not trivially 1 and 0."""
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL.from_config(config)
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return vae.eval()


def _errors(ours: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(||ours - ref|| / ||ref||, max |ours - ref| / max |ref|)."""
    difference = np.asarray(ours, np.float64) - np.asarray(reference, np.float64)
    relative = np.linalg.norm(difference) / np.linalg.norm(reference)
    return float(relative), float(np.abs(difference).max() / np.abs(reference).max())


def _assert_close(ours, reference, what: str) -> None:
    assert ours.shape == reference.shape, (what, ours.shape, reference.shape)
    relative, max_abs = _errors(ours, reference)
    print(f"{what}: relative error {relative:.2e}, max abs error / max abs {max_abs:.2e}")
    assert relative < RELATIVE_TOLERANCE and max_abs < MAX_ERROR_TOLERANCE, (
        what,
        relative,
        max_abs,
    )


def _nchw(array: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def _nhwc(tensor) -> np.ndarray:
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


def _assert_matches_torch(vae, config: AutoencoderConfig, params, image_size: int) -> None:
    """encode (posterior mean and log-variance) and decode agree with the torch model on random
    images [2, S, S, in] and latents [2, S/f, S/f, latent]."""
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, image_size, image_size, config.in_channels))
    latent_size = image_size // config.downsampling_factor
    latents = rng.normal(size=(2, latent_size, latent_size, config.latent_channels))
    images, latents = images.astype(np.float32), latents.astype(np.float32)
    model = AutoencoderKL(config)
    moments = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
    decoded = jax.jit(lambda p, z: model.apply({"params": p}, z, method=model.decode))
    moments, decoded = np.asarray(moments(params, images)), np.asarray(decoded(params, latents))
    with torch.no_grad():
        posterior = vae.encode(_nchw(images)).latent_dist
        reference = _nhwc(vae.decode(_nchw(latents)).sample)
    channels = config.latent_channels
    _assert_close(moments[..., :channels], _nhwc(posterior.mean), "encode mean")
    # diffusers' DiagonalGaussianDistribution clamps the log-variance to [-30, 20].
    logvar = np.clip(moments[..., channels:], -30.0, 20.0)
    _assert_close(logvar, _nhwc(posterior.logvar), "encode logvar")
    _assert_close(decoded, reference, "decode")


@pytest.fixture(scope="module")
def sd_vae():
    return _torch_vae(SD_VAE_CONFIG)


@pytest.fixture(scope="module")
def small_vae_folder(tmp_path_factory):
    """(the small torch VAE, a folder it was saved to with save_pretrained)."""
    vae = _torch_vae(SMALL_CONFIG, seed=1)
    folder = str(tmp_path_factory.mktemp("small_vae"))
    vae.save_pretrained(folder)
    return vae, folder


def _copy_folder(source: str, destination) -> str:
    destination = str(destination)
    shutil.copytree(source, destination)
    return destination


def test_sd_vae_matches_diffusers_encode_and_decode(sd_vae, tmp_path):
    sd_vae.save_pretrained(str(tmp_path))
    assert is_diffusers_autoencoder(str(tmp_path))
    config, params = load_diffusers_autoencoder(str(tmp_path))
    assert config == AutoencoderConfig.from_diffusers(SD_VAE_CONFIG)
    assert config.downsampling_factor == 8
    _assert_matches_torch(sd_vae, config, params, image_size=32)


def test_deprecated_attention_keys_and_conv_shaped_projections_load(small_vae_folder, tmp_path):
    vae, folder = small_vae_folder
    config, params = load_diffusers_autoencoder(folder)
    _assert_matches_torch(vae, config, params, image_size=16)
    state = safetensors.numpy.load_file(os.path.join(folder, WEIGHTS))
    renames = {
        ".to_q.": ".query.",
        ".to_k.": ".key.",
        ".to_v.": ".value.",
        ".to_out.0.": ".proj_attn.",
    }
    old_state = {}
    for key, array in state.items():
        for current, deprecated in renames.items():
            key = key.replace(current, deprecated)
        if key.endswith("query.weight") or key.endswith("proj_attn.weight"):
            array = array[:, :, None, None]  # as a 1x1 conv [O, I, 1, 1]
        old_state[key] = array
    assert sum(".proj_attn." in key for key in old_state) == 4  # encoder and decoder
    old_folder = _copy_folder(folder, tmp_path / "old")
    safetensors.numpy.save_file(old_state, os.path.join(old_folder, WEIGHTS))
    _, old_params = load_diffusers_autoencoder(old_folder)
    equal = jax.tree.map(np.array_equal, params, old_params)
    assert all(jax.tree.leaves(equal))


def test_half_precision_files_load_as_float32(small_vae_folder, tmp_path):
    vae, folder = small_vae_folder
    state = vae.state_dict()
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        half = {key: value.to(dtype).contiguous() for key, value in state.items()}
        half["encoder.conv_in.weight"] = state["encoder.conv_in.weight"]  # a float32 one too
        variant = _copy_folder(folder, tmp_path / name)
        os.remove(os.path.join(variant, WEIGHTS))
        safetensors.torch.save_file(
            half, os.path.join(variant, f"{WEIGHTS[:-12]}.fp16.safetensors")
        )
        _, params = load_diffusers_autoencoder(variant)
        kernel = params["decoder"]["conv_out"]["kernel"]
        expected = half["decoder.conv_out.weight"].float().numpy().transpose(2, 3, 1, 0)
        assert kernel.dtype == np.float32 and np.array_equal(kernel, expected), name


def test_saved_folder_loads_in_diffusers_with_the_same_outputs(tmp_path):
    config = AutoencoderConfig.from_diffusers(SMALL_CONFIG)
    params = init_params(config, jax.random.key(1), (16, 16))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    noise = [0.05 * jax.random.normal(key, leaf.shape) for key, leaf in zip(keys, leaves)]
    params = jax.tree.unflatten(treedef, [leaf + n for leaf, n in zip(leaves, noise)])
    save_diffusers_autoencoder(str(tmp_path), config, params)
    vae = diffusers.AutoencoderKL.from_pretrained(str(tmp_path)).eval()
    _assert_matches_torch(vae, config, params, image_size=16)
    loaded_config, loaded_params = load_diffusers_autoencoder(str(tmp_path))
    assert loaded_config == config
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, loaded_params, params)))


def test_bad_folders_and_weights_raise_config_error_naming_the_problem(small_vae_folder, tmp_path):
    _, folder = small_vae_folder
    with pytest.raises(ConfigError, match="no such folder"):
        load_diffusers_autoencoder(str(tmp_path / "absent"))
    no_config = _copy_folder(folder, tmp_path / "no_config")
    os.remove(os.path.join(no_config, "config.json"))
    assert not is_diffusers_autoencoder(no_config)
    with pytest.raises(ConfigError, match="no config.json"):
        load_diffusers_autoencoder(no_config)
    pickled = _copy_folder(folder, tmp_path / "pickled")
    os.rename(os.path.join(pickled, WEIGHTS), os.path.join(pickled, "diffusion_pytorch_model.bin"))
    with pytest.raises(ConfigError, match="diffusion_pytorch_model.bin is a torch pickle"):
        load_diffusers_autoencoder(pickled)

    state = safetensors.numpy.load_file(os.path.join(folder, WEIGHTS))
    broken = {
        "missing keys: decoder.conv_out.bias": {"decoder.conv_out.bias": None},
        "unexpected keys: encoder.extra.weight": {"encoder.extra.weight": np.zeros(3, np.float32)},
        re.escape("encoder.conv_in.weight: expected shape (32, 1, 3, 3)"): {
            "encoder.conv_in.weight": np.zeros((32, 2, 3, 3), np.float32)
        },
    }
    for index, (message, changes) in enumerate(broken.items()):
        changed = {**state, **changes}
        changed = {key: value for key, value in changed.items() if value is not None}
        bad = _copy_folder(folder, tmp_path / f"bad{index}")
        safetensors.numpy.save_file(changed, os.path.join(bad, WEIGHTS))
        with pytest.raises(ConfigError, match=message):
            load_diffusers_autoencoder(bad)


def test_unsupported_configs_raise_config_error_naming_the_key():
    cases = {
        "act_fn='relu'": {"act_fn": "relu"},
        "down_block_types=": {"down_block_types": ["AttnDownEncoderBlock2D"] * 2},
        r"block_out_channels=\(32, 60\)": {"block_out_channels": [32, 60]},
        "latent_channels=0": {"latent_channels": 0},
    }
    for message, change in cases.items():
        with pytest.raises(ConfigError, match=message):
            AutoencoderConfig.from_diffusers({**SMALL_CONFIG, **change})
    config = AutoencoderConfig.from_diffusers({**SMALL_CONFIG, "force_upcast": True, "_x": 1})
    assert (
        json.loads(json.dumps(config.to_diffusers()))["up_block_types"] == ["UpDecoderBlock2D"] * 2
    )


def test_sd_vae_has_diffusers_parameter_count(sd_vae):
    config = AutoencoderConfig.from_diffusers(SD_VAE_CONFIG)
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0), (64, 64)))
    assert count_params(shapes) == SD_VAE_NUM_PARAMS
    assert sum(param.numel() for param in sd_vae.parameters()) == SD_VAE_NUM_PARAMS
