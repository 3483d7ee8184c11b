"""--mode=sample: restore the EMA params of a run and write samples/*.npz and PNG grids."""

from __future__ import annotations

import json
import os
import time
import zlib

import jax
import numpy as np

from diffjax import restore, writers
from diffjax.experiment import Experiment


def sampling_tag(exp) -> str:
    """The sampler and its steps (or the ODE solver and tolerance), the spacing when not uniform,
    the guidance scale when not 1 (with autoguidance '_ag<w>_guide<its workdir's name>-step<its
    checkpoint step>', loading the guide if the Generator has not), a hash of the prompts, and
    the params' choice: what makes two sample sets (or evaluations) differ."""
    s, o = exp.sampling, exp.sampler_options
    method = f"ode_{o.solver}_rtol{o.rtol:g}" if s.sampler == "ode" else f"{s.sampler}{s.num_steps}"
    if s.sampler != "ode" and s.spacing != "uniform":
        method += f"_{s.spacing}"
    cfg = f"_cfg{s.guidance_scale:g}" if s.guidance_scale != 1.0 else ""
    if s.guidance == "autoguidance":
        guide = os.path.basename(os.path.normpath(os.path.abspath(s.guide_workdir)))
        cfg = f"_ag{s.guidance_scale:g}_guide{guide}-step{exp.load_guide().step}"
    if s.prompts:  # a short stable hash, so runs with other prompts keep their own files
        cfg += f"_prompts{zlib.crc32(json.dumps(list(s.prompts)).encode()):08x}"
    if s.cascade:
        cfg += f"_cascade{zlib.crc32(json.dumps(list(s.cascade)).encode()):08x}"
    return f"{method}{cfg}{restore.params_tag(s, restore.posthoc_sigma_rel(exp))}"


def run_name(exp, step: int, prefix: str = "samples") -> str:
    """File stem naming the checkpoint step, sampling_tag(exp) and the seed."""
    return f"{prefix}_step{step}_{sampling_tag(exp)}_seed{exp.sampling.seed}"


def sample_workdir(exp) -> str:
    """Samples sampling.num_samples images from the run's params; returns the .npz path.

    The .npz holds uint8 `images` [N, H, W, C], `labels` [N], `nfe` (per sample) and `sampling`
    (config.sampling as JSON); NFE and throughput are printed."""
    params, step = restore.sampling_params(exp, exp.workdir)
    s = exp.sampling
    if s.cascade:
        return _sample_cascade(exp, params, step)
    gen = exp.generator()
    compile_s = gen.compile(params)
    labels = gen.labels_for(s.num_samples, s.seed)
    start = time.perf_counter()
    images, nfe = gen.sample(params, s.num_samples, seed=s.seed, labels=labels, progress=True)
    seconds = time.perf_counter() - start
    name = run_name(exp, step)
    path = os.path.join(exp.workdir, "samples", name + ".npz")
    if jax.process_index() == 0:
        writers.save_samples(images, os.path.join(exp.workdir, "samples"), name, labels=labels,
                             nfe=np.asarray(nfe),
                             sampling=json.dumps(exp.config.sampling.to_dict(), default=list))
        print(f"wrote {len(images)} samples ({nfe} NFE each, sampler {s.sampler}) from step "
              f"{step} to {path}; compile {compile_s:.1f} s, {len(images) / seconds:.2f} samples/s")
    return path


def _sample_cascade(exp, params, step: int) -> str:
    """sample_workdir through the stages of config.sampling.cascade (diffjax.cascade)."""
    from diffjax.cascade import sample_cascade

    s = exp.sampling
    images, report = sample_cascade(exp, params, s.num_samples, s.seed)
    name = "cascade_" + run_name(exp, step)
    path = os.path.join(exp.workdir, "samples", name + ".npz")
    if jax.process_index() == 0:
        writers.save_samples(images, os.path.join(exp.workdir, "samples"), name,
                             stages=json.dumps(report, default=str),
                             sampling=json.dumps(exp.config.sampling.to_dict(), default=list))
        for i, r in enumerate(report):
            print(f"stage {i + 1}: {r['workdir']} -> {'x'.join(map(str, r['shape']))}, "
                  f"{r['nfe']} NFE, {r['seconds']:.1f} s")
        print(f"wrote {len(images)} cascade samples to {path}")
    return path


def run(config, workdir: str, fresh: bool = False, record=None) -> None:
    sample_workdir(Experiment(config, workdir, load_data=False))
