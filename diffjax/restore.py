"""Params for sampling from a run's checkpoints: the newest good one or named steps, at the EMA
rates asked for (several: an ensemble). Reads checkpoints of the current and the pre-plug-in
layout. Needs no training code: the restore target comes from the Experiment."""

from __future__ import annotations

import os

import jax

from diffjax import checkpoint, state


def checkpointer(workdir: str, keep: int = 3) -> checkpoint.Checkpointer:
    """The Checkpointer of WORKDIR/checkpoints, reading the pre-plug-in layout too."""
    return checkpoint.Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"), keep,
                                   legacy=(state.legacy_layout, state.from_legacy))


def restore_state(exp, workdir: str):
    """The newest good train state in WORKDIR/checkpoints on exp.mesh, and its step."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in {directory}; train first: "
                                f"python launch.py --workdir {workdir}")
    ckpt = checkpointer(workdir)
    try:
        restored, step = ckpt.restore_latest(exp.abstract_target(), quarantine=False)
    finally:
        ckpt.close()
    if restored is None:
        reasons = "; ".join(ckpt.failures) or "it holds no committed step"
        raise FileNotFoundError(f"no restorable checkpoint in {directory} ({reasons})")
    return restored, step


def restore_step(exp, workdir: str, step: int):
    """The train state of checkpoint `step` of WORKDIR (its manifest verified), on exp.mesh."""
    ckpt = checkpointer(workdir)
    try:
        if step not in ckpt.steps():
            raise FileNotFoundError(
                f"config.sampling.checkpoint_steps contains {step}, but {ckpt.directory} holds "
                f"steps {ckpt.steps()} (training.keep_checkpoints keeps only the newest ones)")
        return ckpt.restore(step, exp.abstract_target())
    finally:
        ckpt.close()


def params_at(exp, train_state, decay: float):
    """The network params of `train_state` averaged at EMA rate `decay` (the EMA plug-in's key);
    0.0: the raw params."""
    if decay == 0.0:
        return train_state.params
    return exp.ema.params(train_state.ema, decay)


def sampling_params(exp, workdir: str, sampling=None):
    """The params `sampling` (default exp.sampling) asks for, and the newest checkpoint step
    they come from. checkpoint_steps: () the newest good checkpoint, else these steps;
    ema_decays: () the EMA's default, else these rates (0.0: the raw params). One (step, rate)
    pair gives one param tree; several give a tuple of trees, an ensemble whose denoiser outputs
    the Generator averages. With config.ema.sigma_rel > 0: the post-hoc EMA of that width from
    the run's snapshots, at the newest snapshot step (diffjax.posthoc_ema)."""
    s = sampling or exp.sampling
    sigma_rel = posthoc_sigma_rel(exp)
    if sigma_rel:
        from diffjax import parallel, posthoc_ema

        like = exp.abstract_state().params
        params, step = posthoc_ema.load_or_reconstruct(os.path.abspath(workdir), sigma_rel, like)
        if exp.mesh is not None:
            params = jax.device_put(params, parallel.replicated(exp.mesh))
        return params, step
    decays = tuple(s.ema_decays) or (exp.ema.default_key,)
    if s.checkpoint_steps:
        states = [(step, restore_step(exp, workdir, step)) for step in s.checkpoint_steps]
    else:
        restored, step = restore_state(exp, workdir)
        states = [(step, restored)]
    members = tuple(params_at(exp, st, decay) for _, st in states for decay in decays)
    newest = max(step for step, _ in states)
    return (members[0] if len(members) == 1 else members), newest


def posthoc_sigma_rel(exp) -> float:
    """config.ema.sigma_rel of exp (0.0: the tracked EMA, or an experiment without post-hoc)."""
    posthoc = getattr(exp, "posthoc", None)
    return float(posthoc.sigma_rel) if posthoc is not None else 0.0


def params_tag(sampling, sigma_rel: float = 0.0) -> str:
    """'' for the default params (newest checkpoint, the default EMA); else '_ema<rates>' and/or
    '_ckpt<steps>' naming the sampling settings' choice, or '_phema<width>' for a post-hoc EMA."""
    tag = f"_phema{sigma_rel:g}" if sigma_rel else ""
    if sampling.ema_decays:
        tag += "_ema" + "-".join(f"{d:g}" for d in sampling.ema_decays)
    if sampling.checkpoint_steps:
        tag += "_ckpt" + "-".join(str(x) for x in sampling.checkpoint_steps)
    return tag
