"""Reads and writes diffusers-format AutoencoderKL folders (config.json and
diffusion_pytorch_model.safetensors) for diffjax.models.autoencoder, with safetensors' numpy API
only: no torch.

Key mapping: a Flax path joins with '.', `name_N` becomes `name.N` for the diffusers lists
(down_blocks, resnets, attentions, ...), and kernel/scale become weight. Conv kernels are
[kh,kw,I,O] here and [O,I,kh,kw] in the file; Dense kernels [I,O] here and Linear [O,I] there.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import numpy as np
import safetensors
import safetensors.numpy

from diffjax.errors import ConfigError, DataError
from diffjax.models.autoencoder import AutoencoderConfig, init_params

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_NAME_FP16 = "diffusion_pytorch_model.fp16.safetensors"
_LISTS = r"down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers|to_out"
_LIST_ITEM = re.compile(rf"^({_LISTS})_(\d+)$")
# The deprecated AttentionBlock names that older Hub files (e.g. the SD VAE's) still use.
_DEPRECATED = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_CURRENT = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_FILE_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


def torch_key(path: tuple[str, ...]) -> str:
    """The diffusers state-dict key of a Flax param path, e.g. ('encoder', 'down_blocks_0',
    'resnets_0', 'norm1', 'scale') -> 'encoder.down_blocks.0.resnets.0.norm1.weight'."""
    *modules, leaf = path
    parts = [_LIST_ITEM.sub(r"\1.\2", name) for name in modules]
    return ".".join(parts + ["bias" if leaf == "bias" else "weight"])


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:  # conv [kh, kw, I, O] -> [O, I, kh, kw]
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape))  # Dense [I, O] -> Linear [O, I]; vectors unchanged


def _expected(config: AutoencoderConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """{torch key: (Flax path, Flax shape)} for every param of the model `config` describes."""
    size = config.downsampling_factor
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0), (size, size)))
    expected = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        path = tuple(entry.key for entry in key_path)
        expected[torch_key(path)] = (path, tuple(leaf.shape))
    return expected


def _first(keys: set[str], count: int = 5) -> str:
    names = sorted(keys)
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return ", ".join(names[:count]) + more


def params_from_state_dict(config: AutoencoderConfig, state_dict: dict[str, np.ndarray]) -> dict:
    """A diffusers AutoencoderKL state dict (numpy, either attention key layout, attention
    weights as Linear [O,I] or 1x1 conv [O,I,1,1], any float dtype) -> float32 Flax params (the
    inner dict of init_params). Missing or unexpected keys and wrong shapes raise ConfigError."""
    state = dict(state_dict)
    for key in list(state):
        match = _DEPRECATED.match(key)
        if match:
            current = f"{match[1]}.{_CURRENT[match[2]]}.{match[3]}"
            if current not in state:  # both present: the old one is reported as unexpected
                state[current] = state.pop(key)
    expected = _expected(config)
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        found = [f"missing keys: {_first(missing)}"] if missing else []
        found += [f"unexpected keys: {_first(unexpected)}"] if unexpected else []
        raise ConfigError(
            f"the weights do not match the AutoencoderKL that config.json describes "
            f"({'; '.join(found)}); are config.json and the weights from the same model?"
        )
    params: dict = {}
    for key, (path, shape) in expected.items():
        array = np.asarray(state[key])
        if len(shape) == 2 and array.ndim == 4 and array.shape[2:] == (1, 1):
            array = array[:, :, 0, 0]  # attention projection stored as a 1x1 conv
        if array.shape != _torch_shape(shape):
            raise ConfigError(
                f"{key}: expected shape {_torch_shape(shape)} (diffusers' [out, in, ...] "
                f"layout) for this config, found {array.shape}"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise ConfigError(f"{key}: expected a float tensor, found dtype {array.dtype}")
        array = array.astype(np.float32)
        array = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T
        node = params
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = np.ascontiguousarray(array)
    return params


def state_dict_from_params(params: dict) -> dict[str, np.ndarray]:
    """Flax params (inner dict, or wrapped in {'params': ...}) -> a float32 numpy diffusers
    state dict in the current key layout (to_q/to_k/to_v/to_out.0 as Linear [O,I])."""
    if set(params) == {"params"}:
        params = params["params"]
    state = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        array = np.asarray(leaf, np.float32)
        array = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T
        state[torch_key(tuple(entry.key for entry in key_path))] = np.ascontiguousarray(array)
    return state


def _weights_path(folder: str) -> str:
    for name in (WEIGHTS_NAME, WEIGHTS_NAME_FP16):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    hint = ""
    for name in os.listdir(folder):
        if name.startswith("diffusion_pytorch_model") and name.endswith(".bin"):
            hint = f"; {name} is a torch pickle; convert it to safetensors"
        elif name.endswith(".safetensors.index.json"):
            hint = f"; {name} indexes sharded weights, which are not supported"
    raise ConfigError(f"{folder}: no {WEIGHTS_NAME} (nor {WEIGHTS_NAME_FP16}){hint}")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy; bfloat16 ones (which numpy lacks) are
    decoded from their raw bits into float32."""
    try:
        with safetensors.safe_open(path, framework="np") as file:
            dtypes = {key: file.get_slice(key).get_dtype() for key in file.keys()}
        if "BF16" not in dtypes.values():
            return safetensors.numpy.load_file(path)
        with open(path, "rb") as file:
            data = file.read()
    except (safetensors.SafetensorError, OSError) as error:
        raise DataError(f"{path}: not a readable safetensors file ({error})") from error
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_size])
    tensors = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, end = (8 + header_size + offset for offset in info["data_offsets"])
        if info["dtype"] == "BF16":
            bits = np.frombuffer(data[begin:end], np.dtype("<u2")).astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif info["dtype"] in _FILE_DTYPES:
            array = np.frombuffer(data[begin:end], np.dtype(_FILE_DTYPES[info["dtype"]]))
        else:
            raise ConfigError(f"{path}: {key} has dtype {info['dtype']}; expected a float type")
        tensors[key] = array.reshape(info["shape"])
    return tensors


def load_diffusers_autoencoder(folder: str) -> tuple[AutoencoderConfig, dict]:
    """A diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model[.fp16].safetensors,
    e.g. a pipeline's vae/) -> (its config, float32 Flax params for AutoencoderKL(config)).
    Raises ConfigError for a missing folder or file and for weights that do not fit the config."""
    if not os.path.isdir(folder):
        raise ConfigError(
            f"{folder}: no such folder; expected a diffusers AutoencoderKL folder with "
            f"{CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    config_path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(config_path):
        hint = ""
        if is_diffusers_autoencoder(os.path.join(folder, "vae")):
            hint = f"; {os.path.join(folder, 'vae')} holds one (a pipeline's VAE)"
        raise ConfigError(f"{folder}: no {CONFIG_NAME}{hint}")
    weights_path = _weights_path(folder)
    try:
        with open(config_path) as file:
            diffusers_config = json.load(file)
    except ValueError as error:
        raise ConfigError(f"{config_path}: not valid JSON ({error})") from error
    class_name = diffusers_config.get("_class_name", "AutoencoderKL")
    if class_name != "AutoencoderKL":
        raise ConfigError(f"{config_path}: _class_name={class_name!r}; expected 'AutoencoderKL'")
    config = AutoencoderConfig.from_diffusers(diffusers_config)
    state_dict = _read_safetensors(weights_path)
    try:
        params = params_from_state_dict(config, state_dict)
    except ConfigError as error:
        raise ConfigError(f"{weights_path}: {error}") from None
    return config, params


def save_diffusers_autoencoder(folder: str, config: AutoencoderConfig, params: Any) -> None:
    """Writes config.json and diffusion_pytorch_model.safetensors (float32, current key layout)
    into `folder` (created if needed), so that diffusers' AutoencoderKL.from_pretrained(folder)
    and load_diffusers_autoencoder read it. params must fit `config` (else ConfigError)."""
    state = state_dict_from_params(params)
    expected = {key: _torch_shape(shape) for key, (_, shape) in _expected(config).items()}
    found = {key: array.shape for key, array in state.items()}
    if found != expected:
        bad = {key for key in expected.keys() | found.keys() if expected.get(key) != found.get(key)}
        raise ConfigError(f"params do not fit the config at: {_first(bad)}")
    os.makedirs(folder, exist_ok=True)
    weights_path = os.path.join(folder, WEIGHTS_NAME)
    safetensors.numpy.save_file(state, weights_path + ".tmp", metadata={"format": "pt"})
    os.replace(weights_path + ".tmp", weights_path)
    with open(os.path.join(folder, CONFIG_NAME), "w") as file:
        json.dump(config.to_diffusers(), file, indent=2, sort_keys=True)
        file.write("\n")


def is_diffusers_autoencoder(folder: str) -> bool:
    """Whether `folder` has a config.json of a diffusers AutoencoderKL (its _class_name, or
    latent_channels and block_out_channels keys). Weights are not checked."""
    try:
        with open(os.path.join(folder, CONFIG_NAME)) as file:
            config = json.load(file)
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    if config.get("_class_name") == "AutoencoderKL":
        return True
    return "latent_channels" in config and "block_out_channels" in config
