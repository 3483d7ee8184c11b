"""--mode=sample: restore the EMA params of a run and write samples/*.npz and PNG grids."""

from __future__ import annotations

import os

import jax

from diffjax import checkpoint, generate, parallel, writers
from diffjax.train import Experiment


def restore_state(exp: Experiment, workdir: str):
    """The newest good train state in WORKDIR/checkpoints, replicated on exp.mesh, and its step."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in {directory}; train first: "
                                f"python launch.py --workdir {workdir}")
    repl = parallel.replicated(exp.mesh)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
                          exp.abstract_state())
    ckpt = checkpoint.Checkpointer(directory)
    try:
        state, step = ckpt.restore_latest(target)
    finally:
        ckpt.close()
    if state is None:
        raise FileNotFoundError(f"no restorable checkpoint in {directory}")
    return state, step


def sample_from_workdir(config, workdir: str) -> str:
    """Samples config.sampling.num_samples images from the run's EMA params; returns the .npz path."""
    exp = Experiment(config, workdir, load_data=False)
    state, step = restore_state(exp, workdir)
    gen = generate.Generator(exp.model, exp.schedule, config, exp.mesh, exp.image_shape,
                             exp.num_classes)
    s = config.sampling
    images, nfe = gen.sample(state.ema_params, s.num_samples, seed=s.seed)
    name = f"samples_step{step}_{s.sampler}{s.num_steps}_seed{s.seed}"
    path = os.path.join(exp.workdir, "samples", name + ".npz")
    if jax.process_index() == 0:
        writers.save_samples(images, os.path.join(exp.workdir, "samples"), name)
        print(f"wrote {len(images)} samples ({nfe} NFE each) from step {step} to {path}")
    return path
