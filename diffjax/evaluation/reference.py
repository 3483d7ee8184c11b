"""Reference statistics of a training set: computed once per dataset, split, resolution,
preprocessing and weights, then cached as .npz (mu, sigma, features, num_images).

Cache location: eval_options.reference_dir, or '' -> `<TFDS data dir>/diffjax_fid_stats/`
(the data dir of diffjax.data.default_data_dir: data_options.data_dir, $DIFFJAX_DATA_DIR or
~/tensorflow_datasets), so the statistics live next to the data they describe and are shared by
every run that reads it.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Iterator

import jax
import numpy as np

from diffjax import data, progress
from diffjax.errors import DataError
from diffjax.evaluation import features, stats_io

CACHE_SUBDIR = "diffjax_fid_stats"


def cache_dir(data_options, eval_options) -> str:
    """Where reference statistics are cached (see the module docstring)."""
    if eval_options.reference_dir:
        return os.path.abspath(os.path.expanduser(eval_options.reference_dir))
    return os.path.join(data.default_data_dir(data_options.data_dir), CACHE_SUBDIR)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text.replace("%", "pct")).strip("_")


def cache_path(data_options, eval_options, image_shape, weights_name: str, num_images: int,
               version: str) -> str:
    """<cache_dir>/<dataset>-<version>_<split>_<H>x<W>x<C>_<preprocessing>_<weights>_n<N>.npz"""
    h, w, c = image_shape
    name = (
        f"{_slug(data_options.name)}-{version}_{_slug(data_options.split)}_{h}x{w}x{c}_"
        f"{eval_options.preprocessing}_{_slug(os.path.splitext(weights_name)[0])}_n{num_images}"
        ".npz"
    )
    return os.path.join(cache_dir(data_options, eval_options), name)


def _image_batches(
    source, num_images: int, image_size: int, batch_size: int
) -> Iterator[np.ndarray]:
    """uint8 [<=batch_size, H, W, C] batches of the first num_images examples, in order, resized
    to image_size as the training pipeline does."""
    for start in range(0, num_images, batch_size):
        batch = []
        for index in range(start, min(start + batch_size, num_images)):
            image = np.asarray(source[index]["image"])
            if image.ndim == 2:
                image = image[..., None]
            if image_size and image.shape[0] != image_size:
                image = data._resize(image, image_size)
            batch.append(image)
        yield np.stack(batch)


def _all_processes(flag: bool) -> bool:
    """True only if `flag` holds on every process (hosts may not share a file system)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.min(multihost_utils.process_allgather(np.int32(flag))))


def reference_statistics(data_options, eval_options, extractor, weights_name: str) -> dict:
    """{'mu': [2048] float64, 'sigma': [2048, 2048] float64, 'features': [N, 2048] float32,
    'num_images': N, 'path': cache file} of data_options' split at its image_size.

    Reads the cache when present; otherwise extracts the features (on all devices) and writes the
    cache from process 0. eval_options.reference_num_images: 0 -> the whole split."""
    d = data_options
    source, info = data.load_source(d.name, d.split, d.data_dir)
    limit = eval_options.reference_num_images
    num_images = len(source) if limit <= 0 else min(limit, len(source))
    if num_images < 2:
        raise DataError(
            f"config.data.split={d.split!r} has {len(source)} images; "
            f"reference statistics need at least 2"
        )
    image_shape, _ = data.dataset_spec(d.name, d.data_dir, d.image_size)
    path = cache_path(d, eval_options, image_shape, weights_name, num_images, str(info.version))
    stored = stats_io.load_npz(path) if os.path.isfile(path) else None
    usable = stored is not None and len(stored.get("features", ())) == num_images
    if stored is not None and not usable:
        logging.warning("ignoring incomplete reference statistics %s", path)
    if _all_processes(usable):  # else every process computes: the extraction is collective
        return {**stored, "num_images": num_images, "path": path}
    if jax.process_index() == 0:
        print(f"computing reference statistics of {d.name} {d.split} "
              f"({num_images} images) into {path}", flush=True)
    batches = _image_batches(source, num_images, d.image_size, extractor.batch_size)
    with progress.bar(num_images, "img", "reference statistics") as bar:
        summary = features.summarise(extractor.iter_batches(batches), True, bar=bar)
    result = {k: summary[k] for k in ("mu", "sigma", "features")}
    if jax.process_index() == 0:
        stats_io.save_stats(
            path,
            result["mu"],
            result["sigma"],
            features=result["features"],
            num_images=np.int64(num_images),
        )
    return {**result, "num_images": num_images, "path": path}


def reference_pixels(data_options, eval_options) -> np.ndarray:
    """[N, H*W*C] float32 in [0, 1]: the reference images themselves (the same N images of the
    split that reference_statistics describes), for pixel-space metrics."""
    d = data_options
    source, _ = data.load_source(d.name, d.split, d.data_dir)
    limit = eval_options.reference_num_images
    num_images = len(source) if limit <= 0 else min(limit, len(source))
    images = np.concatenate(list(_image_batches(source, num_images, d.image_size, 1000)))
    return images.reshape(len(images), -1).astype(np.float32) / 255.0
