"""Post-hoc EMA (EDM2 Sec. 3.2): snapshots of the power-function profiles saved during training,
and the EMA of any other width reconstructed from them after training.

WORKDIR/ema_snapshots/phema-<step>-<sigma_rel>.npz holds one profile's params at one step
(flattened by key path, float32), apart from the resumable checkpoints and never pruned.
WORKDIR/ema_posthoc/sigma_rel<s>-step<t>.npz holds a reconstruction and a .json beside it with
its coefficients and fit error.
"""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np

from diffjax import parallel
from diffjax.core import power_ema
from diffjax.errors import ConfigError

SNAPSHOTS = "ema_snapshots"
RECONSTRUCTIONS = "ema_posthoc"
# A target profile is reconstructable when the snapshots' best fit is this close (relative L2).
MAX_PROFILE_ERROR = 0.05
_NAME = re.compile(r"phema-(\d+)-(\d+\.\d+)\.npz$")


def _flatten(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf, np.float32) for path, leaf in leaves}


def _unflatten(flat: dict, like):
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    missing = [jax.tree_util.keystr(p) for p, _ in paths if jax.tree_util.keystr(p) not in flat]
    if missing:
        raise ConfigError(f"the EMA snapshots do not match this config's network (missing "
                          f"{missing[0]}); reconstruct with the config the run trained with")
    return jax.tree_util.tree_unflatten(treedef, [flat[jax.tree_util.keystr(p)] for p, _ in paths])


def _write_npz(path: str, arrays: dict) -> None:
    """Writes atomically: a killed save leaves a .tmp file, never a truncated snapshot."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def save_snapshots(workdir: str, step: int, ema, ema_state) -> list[str]:
    """Saves every profile of a power EMA at `step` (updates done); returns the paths. Every
    process takes part (gathers FSDP shards); process 0 writes."""
    directory = os.path.join(workdir, SNAPSHOTS)
    paths = []
    for sigma_rel in ema.keys():
        flat = _flatten(parallel.to_host(ema.params(ema_state, sigma_rel)))
        path = os.path.join(directory, f"phema-{step:08d}-{sigma_rel:.4f}.npz")
        if jax.process_index() == 0:
            os.makedirs(directory, exist_ok=True)
            _write_npz(path, flat)
        paths.append(path)
    return paths


def list_snapshots(workdir: str) -> list[tuple[int, float, str]]:
    """[(step, sigma_rel, path)] of WORKDIR's snapshots, by step then width."""
    directory = os.path.join(workdir, SNAPSHOTS)
    found = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        match = _NAME.match(name)
        if match:
            found.append((int(match.group(1)), float(match.group(2)),
                          os.path.join(directory, name)))
    return sorted(found)


def reconstructable_range(steps, sigma_rels, out_step: int) -> tuple[float, float] | None:
    """The widths (lowest, highest) on a fine grid whose profile at out_step the snapshots fit
    within MAX_PROFILE_ERROR; None if none."""
    grid = np.linspace(0.002, power_ema.MAX_SIGMA_REL - 1e-3, 300)
    ok = [s for s in grid if power_ema.posthoc_coefficients(steps, sigma_rels, out_step, s)[1]
          <= MAX_PROFILE_ERROR]
    return (float(min(ok)), float(max(ok))) if ok else None


def plan(workdir: str, sigma_rel: float, step: int = 0) -> dict:
    """Which snapshots, with which coefficients, give the EMA of width sigma_rel at `step` (0: the
    newest snapshot step). Raises ConfigError when there are no snapshots or the width is
    outside what they can reconstruct."""
    snapshots = list_snapshots(workdir)
    if not snapshots:
        raise ConfigError(f"config.ema.sigma_rel={sigma_rel} needs EMA snapshots, but "
                          f"{os.path.join(workdir, SNAPSHOTS)} holds none; train with "
                          f"config.ema.name='power' and config.ema.snapshot_every > 0")
    out_step = step or max(s for s, _, _ in snapshots)
    used = [s for s in snapshots if s[0] <= out_step]
    if not used:
        raise ConfigError(f"no EMA snapshot at or before step {out_step} in {workdir}")
    steps = np.array([s for s, _, _ in used], np.float64)
    widths = np.array([w for _, w, _ in used], np.float64)
    coefficients, error = power_ema.posthoc_coefficients(steps, widths, out_step, sigma_rel)
    if error > MAX_PROFILE_ERROR:
        span = reconstructable_range(steps, widths, out_step)
        allowed = (f"the snapshots (widths {sorted(set(widths.tolist()))}, steps "
                   f"{int(steps.min())}..{int(steps.max())}) reconstruct widths "
                   f"{span[0]:.3f}..{span[1]:.3f}" if span else "no width is reconstructable")
        raise ConfigError(f"config.ema.sigma_rel={sigma_rel} is outside what the stored profiles "
                          f"can reconstruct (relative profile error {error:.3f} > "
                          f"{MAX_PROFILE_ERROR}); {allowed}")
    return {"sigma_rel": float(sigma_rel), "step": int(out_step), "profile_error": error,
            "snapshots": [{"step": s, "sigma_rel": w, "path": p, "coefficient": float(c)}
                          for (s, w, p), c in zip(used, coefficients)]}


def reconstruct(workdir: str, sigma_rel: float, like, step: int = 0, recipe: dict | None = None):
    """(params tree shaped like `like`, plan dict): the sum over snapshots of coefficient x params,
    accumulated in float64 one snapshot at a time. recipe: plan(workdir, sigma_rel, step) when
    the caller has it."""
    recipe = recipe or plan(workdir, sigma_rel, step)
    total = None
    for snap in recipe["snapshots"]:
        with np.load(snap["path"]) as f:
            arrays = {k: f[k] for k in f.files}
        if total is None:
            total = {k: np.zeros(v.shape, np.float64) for k, v in arrays.items()}
        for k, v in arrays.items():
            total[k] += snap["coefficient"] * v
    flat = {k: v.astype(np.float32) for k, v in total.items()}
    return _unflatten(flat, like), recipe


def reconstruction_path(workdir: str, sigma_rel: float, step: int) -> str:
    return os.path.join(workdir, RECONSTRUCTIONS, f"sigma_rel{sigma_rel:.4f}-step{step:08d}.npz")


def write_reconstruction(workdir: str, sigma_rel: float, like, step: int = 0,
                         recipe: dict | None = None):
    """Reconstructs and writes WORKDIR/ema_posthoc/sigma_rel<s>-step<t>.npz (+ .json); returns
    (params, plan, path)."""
    params, recipe = reconstruct(workdir, sigma_rel, like, step, recipe)
    path = reconstruction_path(workdir, sigma_rel, recipe["step"])
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_npz(path, _flatten(params))
        with open(path[:-4] + ".json", "w") as f:
            json.dump(recipe, f, indent=2)
    return params, recipe, path


def load_or_reconstruct(workdir: str, sigma_rel: float, like, step: int = 0):
    """(params, step) of the reconstruction: read if written for the current snapshots' plan,
    else reconstructed (and written)."""
    recipe = plan(workdir, sigma_rel, step)
    path = reconstruction_path(workdir, sigma_rel, recipe["step"])
    meta = path[:-4] + ".json"
    if os.path.isfile(path) and os.path.isfile(meta):
        with open(meta) as f:
            if json.load(f)["snapshots"] == recipe["snapshots"]:
                with np.load(path) as npz:
                    return _unflatten({k: npz[k] for k in npz.files}, like), recipe["step"]
    params, recipe, _ = write_reconstruction(workdir, sigma_rel, like, step, recipe)
    return params, recipe["step"]
