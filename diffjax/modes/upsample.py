"""--mode=upsample: a super-resolution run (conditioning.name='low_res') upsamples the images of
config.sampling.low_res_input (a .npz with uint8 'images' [N, h, w, C], or a folder of PNG/JPEG
files) and writes WORKDIR/upsampled/<name>.npz (uint8 'images' [N, H, W, C]) and a PNG grid of
inputs (bilinearly upsampled) beside outputs."""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from diffjax import restore, writers
from diffjax.errors import ConfigError
from diffjax.experiment import Experiment
from diffjax.modes.sample import run_name


def read_low_res(path: str) -> np.ndarray:
    """uint8 [N, h, w, C] of a .npz or image folder (DataError / FileNotFoundError naming it)."""
    from diffjax.evaluation.stats_io import ImageSet

    images = ImageSet(path)
    return np.concatenate(list(images.batches(256)))


def upsample_workdir(exp) -> str:
    """Upsamples config.sampling.low_res_input with the run's params; returns the .npz path."""
    s = exp.sampling
    if exp.config.conditioning.name != "low_res":
        raise ConfigError(f"--mode=upsample needs a super-resolution run "
                          f"(conditioning.name='low_res'); {exp.workdir} has conditioning.name="
                          f"{exp.config.conditioning.name!r}")
    if not s.low_res_input:
        raise ConfigError("--mode=upsample needs config.sampling.low_res_input: a .npz of uint8 "
                          "'images' [N, h, w, C] or a folder of images")
    low = read_low_res(s.low_res_input)
    exp.with_low_res(low)
    params, step = restore.sampling_params(exp, exp.workdir)
    gen = exp.generator()
    compile_s = gen.compile(params)
    start = time.perf_counter()
    images, nfe = gen.sample(params, len(low), seed=s.seed,
                             labels=np.arange(len(low), dtype=np.int32), progress="upsample")
    seconds = time.perf_counter() - start
    directory = os.path.join(exp.workdir, "upsampled")
    stem = os.path.splitext(os.path.basename(os.path.normpath(s.low_res_input)))[0]
    name = run_name(exp, step, prefix=f"upsampled_{stem}")
    path = os.path.join(directory, name + ".npz")
    if jax.process_index() == 0:
        writers.save_samples(images, directory, name, nfe=np.asarray(nfe))
        h, w = images.shape[1:3]
        shown = min(len(low), 32)
        bilinear = np.asarray(jax.image.resize(low[:shown].astype(np.float32),
                                               (shown, h, w, low.shape[-1]), "linear"))
        pairs = np.stack([np.clip(np.rint(bilinear), 0, 255).astype(np.uint8), images[:shown]], 1)
        writers.save_grid(pairs.reshape(-1, h, w, images.shape[-1]),
                          os.path.join(directory, name + "_pairs.png"))
        print(f"upsampled {len(low)} images {low.shape[1]}x{low.shape[2]} -> {h}x{w} "
              f"({nfe} NFE, sampler {s.sampler}) from step {step} to {path}; compile "
              f"{compile_s:.1f} s, {len(images) / seconds:.2f} images/s")
    return path


def run(config, workdir: str, fresh: bool = False, record=None) -> None:
    upsample_workdir(Experiment(config, workdir, load_data=False))
