"""--mode=sample: restore the EMA params of a run and write samples/*.npz and PNG grids."""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from diffjax import checkpoint, generate, writers
from diffjax.train import Experiment, ema_params_of


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


def restore_step(exp: Experiment, workdir: str, step: int):
    """The train state of checkpoint `step` of WORKDIR (its manifest verified), on exp.mesh."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    ckpt = checkpoint.Checkpointer(directory)
    try:
        if step not in ckpt.steps():
            raise FileNotFoundError(
                f"config.sampling.checkpoint_steps contains {step}, but {directory} holds steps "
                f"{ckpt.steps()} (training.keep_checkpoints keeps only the newest ones)")
        return ckpt.restore(step, exp.abstract_target())
    finally:
        ckpt.close()


def restore_sampling_params(exp: Experiment, config, workdir: str):
    """The params config.sampling asks for, and the (newest) checkpoint step they come from.

    sampling.checkpoint_steps: () the newest good checkpoint, else these steps;
    sampling.ema_decays: () training.ema_decay, else these EMA rates (0.0: the raw params).
    One (step, rate) pair gives one param tree; several give a tuple of trees, an ensemble whose
    denoiser outputs generate.Generator averages."""
    s = config.sampling
    decays = tuple(s.get("ema_decays", ())) or (config.training.ema_decay,)
    steps = tuple(s.get("checkpoint_steps", ()))
    if steps:
        states = [(step, restore_step(exp, workdir, step)) for step in steps]
    else:
        state, step = restore_state(exp, workdir)
        states = [(step, state)]
    members = tuple(ema_params_of(state, config, decay) for _, state in states
                    for decay in decays)
    newest = max(step for step, _ in states)
    return (members[0] if len(members) == 1 else members), newest


def params_tag(config) -> str:
    """'' for the default params (newest checkpoint, training.ema_decay); else
    '_ema<rates>' and/or '_ckpt<steps>' naming config.sampling's choice."""
    s = config.sampling
    tag = ""
    if tuple(s.get("ema_decays", ())):
        tag += "_ema" + "-".join(f"{d:g}" for d in s.ema_decays)
    if tuple(s.get("checkpoint_steps", ())):
        tag += "_ckpt" + "-".join(str(x) for x in s.checkpoint_steps)
    return tag


def run_name(config, step: int, prefix: str = "samples") -> str:
    """File stem naming the checkpoint step, the sampler and its steps (or the ODE solver and
    tolerance), the spacing when not uniform, the guidance scale when not 1, and the seed."""
    s = config.sampling
    method = (f"ode_{s.ode_solver}_rtol{s.ode_rtol:g}" if s.sampler == "ode"
              else f"{s.sampler}{s.num_steps}")
    if s.sampler != "ode" and s.spacing != "uniform":
        method += f"_{s.spacing}"
    cfg = f"_cfg{s.guidance_scale:g}" if s.guidance_scale != 1.0 else ""
    return f"{prefix}_step{step}_{method}{cfg}{params_tag(config)}_seed{s.seed}"


def sample_from_workdir(config, workdir: str) -> str:
    """Samples config.sampling.num_samples images from the run's EMA params; returns the .npz path.

    The .npz holds uint8 `images` [N, H, W, C], `labels` [N], `nfe` (per sample) and `sampling`
    (config.sampling as JSON); NFE and throughput are printed."""
    exp = Experiment(config, workdir, load_data=False)
    params, step = restore_sampling_params(exp, config, workdir)
    gen = generate.Generator(exp.model, exp.schedule, config, exp.mesh, exp.image_shape,
                             exp.num_classes)
    s = config.sampling
    compile_s = gen.compile(params)
    labels = gen.labels_for(s.num_samples, s.seed)
    start = time.perf_counter()
    images, nfe = gen.sample(params, s.num_samples, seed=s.seed, labels=labels,
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
