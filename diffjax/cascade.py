"""Cascaded sampling (Cascaded Diffusion Models, Ho et al. 2021; Imagen): a base model samples at
low resolution and each super-resolution stage (conditioning.name='low_res') upsamples the
stage before it.

config.sampling.cascade names the earlier stages' workdirs, base first; the run being sampled
(--mode=sample or --mode=eval --workdir) is the last stage. Every earlier stage samples with the
sampler settings of its own config.json; the last with this run's. The resolutions must chain:
stage i + 1's conditioning.low_res.size and channels are stage i's image.
"""

from __future__ import annotations

import os
import time

import numpy as np

from diffjax.errors import ConfigError


def stage_experiment(exp, workdir: str):
    """The Experiment of the trained run in `workdir` (its config.json) on exp's devices."""
    from diffjax.experiment import Experiment

    config = exp.run_config(workdir, "sampling.cascade")
    config.sampling.cascade = ()
    return Experiment(config, os.path.abspath(workdir), load_data=False)


def _image_shape(stage) -> tuple[int, int, int]:
    return tuple(int(v) for v in stage.image_shape)


def check_chain(stages: list) -> None:
    """ConfigError unless each stage after the first is a low_res model whose low-resolution
    input is the previous stage's image."""
    for before, after in zip(stages, stages[1:]):
        made = _image_shape(before)
        if after.config.conditioning.name != "low_res":
            raise ConfigError(f"config.sampling.cascade: {after.workdir} follows {before.workdir} "
                              f"but is not a super-resolution model "
                              f"(conditioning.name={after.config.conditioning.name!r}); allowed: "
                              f"conditioning.name='low_res' for every stage after the base")
        size, channels = after.conditioning.options.size, after.conditioning.channels
        if made != (size, size, channels):
            raise ConfigError(f"config.sampling.cascade's resolutions do not chain: "
                              f"{before.workdir} makes {made[0]}x{made[1]}x{made[2]} images but "
                              f"{after.workdir} upsamples {size}x{size}x{channels} "
                              f"(its conditioning.low_res.size={size})")


def sample_cascade(exp, params, num_samples: int, seed: int = 0,
                   progress: bool = True) -> tuple[np.ndarray, list[dict]]:
    """Samples the cascade ending in exp (whose sampling params are `params`): uint8 images
    [num_samples, H, W, C] at exp's resolution, and per stage {'workdir', 'shape', 'nfe',
    'seconds'} (sampling only, compilation included)."""
    from diffjax import restore

    stages = [stage_experiment(exp, w) for w in exp.sampling.cascade] + [exp]
    check_chain(stages)
    images, classes, report = None, None, []
    for i, stage in enumerate(stages):
        start = time.perf_counter()
        stage_params = params if stage is exp else restore.sampling_params(stage,
                                                                            stage.workdir)[0]
        if images is not None:  # the classes of a class-conditional chain pass along
            stage.with_low_res(images, classes if stage.conditioning.num_classes else None)
            labels = np.arange(num_samples, dtype=np.int32)
        gen = stage.generator()
        if images is None:
            labels = gen.labels_for(num_samples, seed)
            classes = labels if stage.conditioning.num_classes else None
        images, nfe = gen.sample(stage_params, num_samples, seed=seed, labels=labels,
                                 progress=f"cascade stage {i + 1}/{len(stages)}" if progress
                                 else False)
        report.append({"workdir": stage.workdir, "shape": list(images.shape[1:]), "nfe": nfe,
                       "seconds": time.perf_counter() - start})
    return images, report
