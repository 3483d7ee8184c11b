"""--mode=sample: restore the EMA params of a run and write samples/*.npz and PNG grids."""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from diffjax import checkpoint, generate, parallel, writers
from diffjax.train import Experiment


def restore_state(exp: Experiment, workdir: str):
    """The newest good train state in WORKDIR/checkpoints, replicated on exp.mesh, and its step."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in {directory}; train first: "
                                f"python launch.py --workdir {workdir}")
    ckpt = checkpoint.Checkpointer(directory)
    try:
        state, step = ckpt.restore_latest(exp.abstract_target(), quarantine=False)
    finally:
        ckpt.close()
    if state is None:
        reasons = "; ".join(ckpt.failures) or "it holds no committed step"
        raise FileNotFoundError(f"no restorable checkpoint in {directory} ({reasons})")
    return state, step


def run_name(config, step: int, prefix: str = "samples") -> str:
    """File stem naming the checkpoint step, the sampler and its steps (or the ODE solver and
    tolerance), the spacing when not uniform, the guidance scale when not 1, and the seed."""
    s = config.sampling
    method = (f"ode_{s.ode_solver}_rtol{s.ode_rtol:g}" if s.sampler == "ode"
              else f"{s.sampler}{s.num_steps}")
    if s.sampler != "ode" and s.spacing != "uniform":
        method += f"_{s.spacing}"
    cfg = f"_cfg{s.guidance_scale:g}" if s.guidance_scale != 1.0 else ""
    return f"{prefix}_step{step}_{method}{cfg}_seed{s.seed}"


def sample_from_workdir(config, workdir: str) -> str:
    """Samples config.sampling.num_samples images from the run's EMA params; returns the .npz path.

    The .npz holds uint8 `images` [N, H, W, C], `labels` [N], `nfe` (per sample) and `sampling`
    (config.sampling as JSON); NFE and throughput are printed."""
    exp = Experiment(config, workdir, load_data=False)
    state, step = restore_state(exp, workdir)
    gen = generate.Generator(exp.model, exp.schedule, config, exp.mesh, exp.image_shape,
                             exp.num_classes)
    s = config.sampling
    compile_s = gen.compile(state.ema_params)
    labels = gen.labels_for(s.num_samples, s.seed)
    start = time.perf_counter()
    images, nfe = gen.sample(state.ema_params, s.num_samples, seed=s.seed, labels=labels,
                             progress=True)
    seconds = time.perf_counter() - start
    name = run_name(config, step)
    path = os.path.join(exp.workdir, "samples", name + ".npz")
    if jax.process_index() == 0:
        writers.save_samples(images, os.path.join(exp.workdir, "samples"), name, labels=labels,
                             nfe=np.asarray(nfe), sampling=json.dumps(s.to_dict(), default=list))
        print(f"wrote {len(images)} samples ({nfe} NFE each, sampler {s.sampler}) from step "
              f"{step} to {path}; compile {compile_s:.1f} s, {len(images) / seconds:.2f} samples/s")
    return path
