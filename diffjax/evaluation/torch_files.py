"""Reads tensors from torch files with the standard library and numpy only (torch is not needed).

Three layouts are understood:
- the zip archive written by `torch.save` (torch >= 1.6): `<root>/data.pkl` plus raw storages in
  `<root>/data/<key>`;
- TorchScript archives (`torch.jit.save`): the same layout, whose pickle also names `__torch__.*`
  module classes and `torch.jit._pickle` helpers;
- the legacy `torch.save` stream (torch < 1.6): magic number, protocol, system info, the pickled
  object, the storage keys, then each storage as an int64 element count and its raw bytes.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}


class _Storage:
    """A flat storage: dtype from its pickled type name, bytes filled in when read."""

    def __init__(self, key: str, dtype, numel: int):
        self.key, self.dtype, self.numel = key, np.dtype(dtype), int(numel)
        self.data: np.ndarray | None = None


class _TensorRef:
    """A strided view of a storage, materialized once every storage has been read."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = (
            storage,
            int(offset),
            tuple(size),
            tuple(stride),
        )

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise ValueError(f"storage {self.storage.key!r} was never read from the file")
        if not self.size:
            return np.array(data[self.offset])
        extent = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n)
        if extent > data.size:
            raise ValueError(
                f"tensor of size {self.size} runs past its storage ({data.size} elements)"
            )
        base = data[self.offset :]
        item = data.dtype.itemsize
        return np.lib.stride_tricks.as_strided(
            base, self.size, tuple(s * item for s in self.stride)
        ).copy()


class TorchScriptObject:
    """A module object of a TorchScript archive; its pickled state becomes attributes."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    return data


class _Unpickler(pickle.Unpickler):
    """Resolves only the globals torch files use for tensors and containers; anything else is an
    error, so no code from the file runs."""

    def __init__(self, file, storages: dict[str, _Storage], legacy: bool):
        super().__init__(file)
        self.storages, self.legacy = storages, legacy

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):
            return type(name, (TorchScriptObject,), {})
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return lambda value: value  # build_intlist, build_tensorlist, ...
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if module == "torch" and name == "Size":
            return tuple
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unsupported global {module}.{name} in a torch file")

    def persistent_load(self, saved_id):
        kind = saved_id[0].decode() if isinstance(saved_id[0], bytes) else saved_id[0]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {saved_id[:2]!r}")
        storage_type, key, _location, numel = saved_id[1:5]
        if self.legacy and len(saved_id) > 5 and saved_id[5] is not None:
            raise pickle.UnpicklingError("storage views (torch < 0.4 files) are not supported")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(key, _STORAGE_DTYPES[storage_type], numel)
        return self.storages[key]


def _materialize(obj):
    if isinstance(obj, _TensorRef):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    if isinstance(obj, TorchScriptObject):
        obj.__dict__.update({k: _materialize(v) for k, v in obj.__dict__.items()})
    return obj


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(
                f"{path}: not a torch.save / torch.jit.save archive (no <root>/data.pkl)"
            )
        root = pickles[0][: -len("data.pkl")]
        if root + "byteorder" in names and archive.read(root + "byteorder") != b"little":
            raise ValueError(f"{path}: big-endian torch archives are not supported")
        storages: dict[str, _Storage] = {}
        obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), storages, legacy=False).load()
        for storage in storages.values():
            raw = archive.read(f"{root}data/{storage.key}")
            storage.data = np.frombuffer(raw, storage.dtype)
    return _materialize(obj)


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        if pickle.load(f) != _LEGACY_MAGIC:
            raise ValueError(
                f"{path}: not a torch file (neither a zip archive nor a legacy stream)"
            )
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info
        storages: dict[str, _Storage] = {}
        obj = _Unpickler(f, storages, legacy=True).load()
        keys = pickle.load(f)
        for key in keys:
            storage = storages[str(key)]
            (numel,) = struct.unpack("<q", f.read(8))
            nbytes = numel * storage.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError(f"{path}: truncated storage {key!r}")
            storage.data = np.frombuffer(raw, storage.dtype)
    return _materialize(obj)


def load(path: str) -> Any:
    """The object saved in a torch file, with every tensor as a numpy array (no torch needed).

    TorchScript modules come back as `TorchScriptObject`s whose attributes are their state."""
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)


def flatten(obj, prefix: str = "") -> dict[str, Any]:
    """Nested dicts / TorchScript objects -> {'a.b.c': leaf}, as in a torch state_dict."""
    if isinstance(obj, TorchScriptObject):
        obj = obj.__dict__
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}
