"""The latent cache: a cacheable codec's `moments` (a VAE's posterior mean and log-variance) of
every training image and of its horizontal flip, computed once, so a latent model's train step
skips the encoder and draws z from the stored moments with its own key.

The cache is keyed by the codec's identity (a hash of the autoencoder's weights), the data (name,
split, size, flips) and the encoding layout (global batch, device count): another autoencoder, or
any of these, gives another key and a fresh cache. It is encoded with the training step's batch
and sharding, so the moments are the bits the step would compute on the fly, and training from
the cache is bit-identical to encoding every step (tests/test_latent.py).

Layout: <cache_dir>/<key>/moments.npy [N, F, h, w, K] float32 (F = 2 with random flips, [:, 1]
the flipped image's) and meta.json; written to a temporary directory first, then renamed, so a
killed build leaves no partial cache behind. Every process computes the whole table (it takes
part in the sharded encode and gathers the result), so hosts need not share a file system.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import jax
import numpy as np

from diffjax import data, parallel

CACHE_SUBDIR = "diffjax_latent_cache"


def cache_key(codec, data_options, pipeline, num_devices: int) -> str:
    """The cache's name: changes with the codec's weights, the data and the encoding layout."""
    described = {"codec": codec.name, "identity": codec.identity(), "dataset": data_options.name,
                 "split": data_options.split, "image_size": data_options.image_size,
                 "num_examples": pipeline.num_examples, "flips": bool(pipeline.random_flip),
                 "global_batch": pipeline.global_batch, "num_devices": num_devices}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:20]


def cache_dir(codec, data_options) -> str:
    if codec.cache_dir:
        return os.path.abspath(os.path.expanduser(codec.cache_dir))
    return os.path.join(data.default_data_dir(data_options.data_dir), CACHE_SUBDIR)


def encode_split(codec, pipeline, mesh) -> np.ndarray:
    """moments [N, F, h, w, K] of every example of `pipeline`'s split (F = 2: also flipped),
    encoded in global batches of pipeline.global_batch over `mesh`, as the train step does."""
    repl, sharded = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    fn = jax.jit(codec.moments, in_shardings=(repl, sharded), out_shardings=sharded)
    n, batch = pipeline.num_examples, pipeline.global_batch
    flips = (False, True) if pipeline.random_flip else (False,)
    table = None
    for start, _, images in pipeline.ordered_batches(n):
        for f, flip in enumerate(flips):
            local = images[:, :, ::-1] if flip else images
            out = parallel.to_host(fn(codec.params, parallel.to_global(local, mesh)))
            if table is None:
                table = np.zeros((n, len(flips), *out.shape[1:]), np.float32)
            table[start:start + batch, f] = out[:n - start]
    return table


def load_or_build(codec, data_options, pipeline, mesh) -> tuple[np.ndarray, str, bool]:
    """(the table, its directory, whether it was built now): read where a complete cache of this
    key exists, else encode and store it."""
    directory = os.path.join(cache_dir(codec, data_options),
                             cache_key(codec, data_options, pipeline, mesh.devices.size))
    path = os.path.join(directory, "moments.npy")
    if os.path.isfile(os.path.join(directory, "meta.json")) and os.path.isfile(path):
        return np.load(path, mmap_mode="r"), directory, False
    start = time.time()
    table = encode_split(codec, pipeline, mesh)
    tmp = f"{directory}.tmp-{os.getpid()}-{jax.process_index()}"
    os.makedirs(tmp, exist_ok=True)
    np.save(os.path.join(tmp, "moments.npy"), table)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({"codec": codec.name, "identity": codec.identity(), "shape": list(table.shape),
                   "dataset": data_options.name, "split": data_options.split,
                   "seconds": time.time() - start}, f, indent=2)
    try:
        os.replace(tmp, directory)
    except OSError:  # another process (or host on a shared disk) stored it first
        shutil.rmtree(tmp, ignore_errors=True)
    return table, directory, True


class LatentPipeline:
    """The training pipeline with each image replaced by its cached moments: batch(step) ->
    {'latent_moments': [B_local, h, w, K], 'label': [B_local]}, the same examples and flips as
    the image pipeline's batch(step)."""

    def __init__(self, pipeline, table: np.ndarray):
        self.pipeline, self.table = pipeline, table
        self.num_examples, self.image_shape = pipeline.num_examples, pipeline.image_shape
        self.global_batch = pipeline.global_batch

    def batch(self, step: int) -> dict[str, np.ndarray]:
        p = self.pipeline
        index = p.indices(step)
        flip = p.flips(step).astype(np.int64) if self.table.shape[1] == 2 else 0
        _, labels = p.examples(index)
        return {"latent_moments": np.asarray(self.table[index, flip]), "label": labels}


def cached_pipeline(codec, data_options, pipeline, mesh, log=print) -> LatentPipeline:
    """`pipeline` reading the codec's moments from the cache (built on first use)."""
    table, directory, built = load_or_build(codec, data_options, pipeline, mesh)
    if jax.process_index() == 0:
        what = "encoded the training split into" if built else "reading cached latents from"
        log(f"latent cache: {what} {directory} ({table.shape[0]} images x {table.shape[1]} "
            f"orientations, {table.nbytes / 2**20:.1f} MiB)")
    return LatentPipeline(pipeline, table)
