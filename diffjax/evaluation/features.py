"""FID Inception features of image batches: jitted, batch-sharded over all devices of a mesh."""

from __future__ import annotations

import functools
from typing import Iterable, Iterator

import jax
import numpy as np

from diffjax import parallel
from diffjax.errors import DataError
from diffjax.evaluation import inception


@functools.cache
def _network(with_head: bool, mesh):
    """The jitted network for a mesh, shared by every extractor (compiled once per batch)."""
    data, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    model = inception.FIDInceptionV3(with_head=with_head)
    return jax.jit(model.apply, in_shardings=(repl, data), out_shardings=data)


@functools.cache
def _preprocessor(mode: str, mesh):
    """The jitted preprocessing (compiled once per input shape and dtype)."""
    data = parallel.batch_sharding(mesh)
    return jax.jit(
        functools.partial(inception.preprocess, mode=mode), in_shardings=data, out_shardings=data
    )


def padded_size(n: int, batch_size: int, num_devices: int) -> int:
    """The batch n images are padded to: the smallest of batch_size, then repeated halvings
    rounded up to a multiple of num_devices (batch_size is one), that holds n. A small set is not
    padded to a whole batch, and at most log2(batch_size / num_devices) more programs compile."""
    per_device = batch_size // num_devices
    while per_device > 1 and -(-per_device // 2) * num_devices >= n:
        per_device = -(-per_device // 2)
    return per_device * num_devices


def check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    """Validates the input contract and returns `images` as a numpy array.

    images: [N, H, W, C], C in (1, 3), uint8 in [0, 255] or float in [0, 1] (pytorch-fid's
    ToTensor range; a diffjax model's [-1, 1] output is (x + 1) / 2). Any H, W >= 2."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{name} must be [N, H, W, C] (NHWC) with C in (1, 3); got shape {images.shape}"
        )
    if images.shape[0] == 0:
        raise DataError(f"{name} is empty (shape {images.shape})")
    if min(images.shape[1:3]) < 2:
        raise DataError(f"{name} must be at least 2x2 pixels; got shape {images.shape}")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(
            f"{name} has dtype {images.dtype}; allowed: uint8 in [0, 255] or float in [0, 1]"
        )
    lo, hi = float(np.min(images)), float(np.max(images))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-6 or hi > 1 + 1e-6:
        raise DataError(
            f"float {name} must lie in [0, 1]; got values in [{lo}, {hi}] "
            f"(for [-1, 1] images pass (x + 1) / 2, or uint8)"
        )
    return images.astype(np.float32)


class InceptionExtractor:
    """FID Inception-v3 over a mesh: `extract(images)` -> {'pool3': [N, 2048] float32} (plus
    'logits_unbiased': [N, 1008] when the params hold the fc head).

    The network is compiled once per padded batch size (see padded_size); preprocessing
    (resize to 299 and scaling) is compiled once per input shape and dtype. Every process must
    pass the same images; each device computes its slice of every batch."""

    def __init__(
        self, params: dict, mesh=None, batch_size: int = 100, preprocessing: str = "pytorch_fid"
    ):
        if preprocessing not in inception.PREPROCESSING:
            raise DataError(
                f"preprocessing={preprocessing!r} is unknown; allowed: "
                f"{', '.join(inception.PREPROCESSING)}"
            )
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} must be >= 1")
        self.mesh = mesh if mesh is not None else parallel.make_mesh(-1)
        self.preprocessing = preprocessing
        self.has_head = "fc_kernel" in params["params"]
        n_dev = self.mesh.devices.size
        self.batch_size = -(-batch_size // n_dev) * n_dev
        self._data = parallel.batch_sharding(self.mesh)
        self.params = jax.device_put(params, parallel.replicated(self.mesh))
        self._net = _network(self.has_head, self.mesh)
        self._preprocess = _preprocessor(self.preprocessing, self.mesh)

    def _global(self, batch: np.ndarray) -> jax.Array:
        return jax.make_array_from_callback(batch.shape, self._data, lambda index: batch[index])

    def extract_batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images: [n <= batch_size, H, W, C] (see check_images) -> features of those n images."""
        images = check_images(images)
        n = len(images)
        if n > self.batch_size:
            raise DataError(f"{n} images exceed the batch size {self.batch_size}")
        size = padded_size(n, self.batch_size, self.mesh.devices.size)
        padded = np.zeros((size, *images.shape[1:]), images.dtype)
        padded[:n] = images
        x = self._preprocess(self._global(padded))
        out = parallel.to_host(self._net(self.params, x))
        return {k: np.asarray(v[:n], np.float32) for k, v in out.items()}

    def iter_batches(self, batches: Iterable[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Features of each array of an iterable (arrays of any length, split as needed)."""
        for images in batches:
            for start in range(0, len(images), self.batch_size):
                yield self.extract_batch(images[start : start + self.batch_size])

    def extract(self, images: np.ndarray | Iterable[np.ndarray]) -> dict[str, np.ndarray]:
        """[N, H, W, C] images, or an iterable of such arrays -> {'pool3': [N, 2048], ...}."""
        if isinstance(images, np.ndarray):
            images = [check_images(images)]
        parts = list(self.iter_batches(images))
        if not parts:
            raise DataError("no images to extract features from")
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def summarise(outputs: Iterable[dict[str, np.ndarray]], keep_features: bool = False,
              keep_logits: bool = False, bar=None) -> dict:
    """Streams extractor outputs ({'pool3': [n, 2048], 'logits_unbiased': [n, 1008] where the
    weights have the head}) into {'mu': [2048] float64, 'sigma': [2048, 2048] float64, 'num': N},
    plus 'features' [N, 2048] and 'logits' [N, 1008] float32 when kept (and available).
    bar: a progress bar (diffjax.progress.bar) advanced by each output's image count."""
    from diffjax.evaluation import metrics

    stats, pool3, logits = metrics.FeatureStats(), [], []
    for out in outputs:
        stats.update(out["pool3"])
        if bar is not None:
            bar.update(len(out["pool3"]))
        if keep_features:
            pool3.append(out["pool3"])
        if keep_logits and "logits_unbiased" in out:
            logits.append(out["logits_unbiased"])
    result = {"mu": stats.mu, "sigma": stats.sigma, "num": stats.num}
    if pool3:
        result["features"] = np.concatenate(pool3)
    if logits:
        result["logits"] = np.concatenate(logits)
    return result
