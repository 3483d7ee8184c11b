"""Orbax checkpoints that survive kills and corruption.

- Saves are async; Orbax writes a step into a `*.orbax-checkpoint-tmp` directory and renames it
  when it commits, so a save killed half-way is never mistaken for a step.
- After a step commits, process 0 writes `diffjax_manifest.json` into it: the size and SHA-256 of
  every file. Restore checks the manifest first, so flipped bytes, truncated or missing files are
  detected even where the bytes would still decode.
- A step that fails its manifest, fails to read, or holds non-finite params is moved aside to
  `checkpoints/corrupt/` (never deleted) and the previous step is used.
- Orbax deletes old steps (keep-N) only after a newer one has committed.
- A step written in an older layout of the same state (`legacy`: how to express a target in that
  layout, and how to convert what was read) is restored in that layout and converted.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from diffjax import files
from diffjax.errors import DataError

MANIFEST = "diffjax_manifest.json"
CORRUPT_DIR = "corrupt"


class CorruptCheckpointError(DataError):
    """A committed step whose files do not match its manifest or do not read back."""


class _Mismatch(Exception):
    """A readable step whose arrays have other names or shapes than the restore target."""


class _Unfit(Exception):
    """A step whose files match its manifest but which does not restore onto the target."""


def _list_files(step_dir: str) -> list[str]:
    files = []
    for root, _, names in os.walk(step_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            if rel != MANIFEST:
                files.append(rel)
    return sorted(files)


def write_manifest(step_dir: str) -> None:
    """Records {relative path: [size, sha256]} of every file of a committed step."""
    entries = {}
    for rel in _list_files(step_dir):
        path = os.path.join(step_dir, rel)
        entries[rel] = [os.path.getsize(path), files.sha256(path)]
    tmp = os.path.join(step_dir, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"files": entries}, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, MANIFEST))


def verify_manifest(step_dir: str) -> bool:
    """Raises CorruptCheckpointError naming the first bad file; returns False when the step has no
    manifest (killed between its commit and the manifest write), True when every file matches."""
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            entries = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as e:
        raise CorruptCheckpointError(f"its manifest {path} is unreadable ({e})") from e
    present = set(_list_files(step_dir))
    for rel, (size, digest) in sorted(entries.items()):
        file_path = os.path.join(step_dir, rel)
        if rel not in present:
            raise CorruptCheckpointError(f"file {rel} is missing")
        actual = os.path.getsize(file_path)
        if actual != size:
            raise CorruptCheckpointError(f"file {rel} has {actual} bytes, {size} were written "
                                         f"(truncated or overwritten)")
        if files.sha256(file_path) != digest:
            raise CorruptCheckpointError(f"file {rel} does not match its SHA-256 (flipped bytes)")
    return True


def _path_name(path) -> str:
    parts = []
    for key in path:
        parts.append(str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))))
    return ".".join(parts)


def state_shapes(state) -> dict[str, tuple[int, ...]]:
    """{'params.conv_in.kernel': shape, ...} of a train state (arrays or ShapeDtypeStructs), in
    the naming `Checkpointer.saved_shapes` uses."""
    import flax

    tree = flax.serialization.to_state_dict(state)
    return {_path_name(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.floating))


class Checkpointer:
    """An Orbax CheckpointManager under an absolute directory, with manifests and fallback.

    legacy: optional (layout, convert): layout(target) -> the target in an older layout (None:
    it has none), convert(restored, target) -> the restored older state in the target's layout."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True, legacy=None):
        self.directory = os.path.abspath(directory)
        self.legacy = legacy
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=ocp.StandardCheckpointHandler())
        self._unmanifested: list[int] = []
        self.failures: list[str] = []  # why steps were skipped by the last restore_latest

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state, force: bool = False) -> bool:
        """Starts an async save of `state` at `step` (after the previous save has committed and
        been given its manifest); returns whether a save was started."""
        self.wait()
        started = self.manager.save(step, args=ocp.args.StandardSave(state), force=force)
        if started:
            self._unmanifested.append(step)
        return started

    def wait(self) -> None:
        """Blocks until pending saves have committed, then writes their manifests."""
        self.manager.wait_until_finished()
        self.manager.check_for_errors()
        pending, self._unmanifested = self._unmanifested, []
        if jax.process_index() == 0:
            for step in pending:
                if os.path.isdir(self.step_dir(step)):  # keep-N may already have removed it
                    write_manifest(self.step_dir(step))

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def saved_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        """{'params.conv_in.kernel': shape, ...} of every array stored at `step` (metadata only)."""
        return {_path_name(path): tuple(leaf.shape) for path, leaf in
                jax.tree_util.tree_flatten_with_path(dict(self.manager.item_metadata(step)))[0]}

    def _legacy_target(self, target, saved: dict):
        """The target in the legacy layout when step's arrays `saved` are in it, else None."""
        if self.legacy is None:
            return None
        old = self.legacy[0](target)
        return old if old is not None and state_shapes(old) == saved else None

    def layout_diff(self, step: int, target) -> list[str]:
        """The arrays whose names or shapes differ between step `step` and `target` ([]: it
        restores onto target, directly or through the legacy layout)."""
        saved, wanted = self.saved_shapes(step), state_shapes(target)
        if saved == wanted or self._legacy_target(target, saved) is not None:
            return []
        return [f"{k}: saved {saved.get(k)}, now {wanted.get(k)}"
                for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]

    def _quarantine(self, step: int, reason: str) -> None:
        """Moves a bad step to checkpoints/corrupt/STEP-<time> (process 0), so it is kept for
        inspection but neither restored nor in the way of a new save at the same step."""
        if jax.process_index() == 0:
            target = os.path.join(self.directory, CORRUPT_DIR, f"{step}-{int(time.time())}")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(self.step_dir(step), target)
            with open(os.path.join(target, "REASON.txt"), "w") as f:
                f.write(reason + "\n")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"diffjax_quarantine_{step}")
        self.manager.reload()

    def _read(self, step: int, abstract, wanted: dict):
        """Step `step` restored onto `abstract`, checked against its manifest, the target's shapes
        (`wanted`) and for finite values. Raises _Mismatch (another train state), _Unfit (intact
        bytes that do not restore onto the target), CorruptCheckpointError, or Orbax's error for
        an unverified step that does not read."""
        verified = verify_manifest(self.step_dir(step))
        convert = None
        try:
            saved = self.saved_shapes(step)
            old = self._legacy_target(abstract, saved) if saved != wanted else None
            if old is not None:
                logging.warning("checkpoint step %d is in the layout before plug-ins; restoring "
                                "it into the current layout", step)
                convert = (self.legacy[1], abstract)
                abstract, wanted = old, saved
            if saved != wanted:
                diff = sorted(k for k in set(saved) | set(wanted)
                              if saved.get(k) != wanted.get(k))
                raise _Mismatch(f"checkpoint step {step} in {self.directory} holds another "
                                f"train state than this run's: {len(diff)} arrays differ, "
                                f"e.g. " + ", ".join(f"{k}: saved {saved.get(k)}, now "
                                                     f"{wanted.get(k)}" for k in diff[:3]))
            if not verified:
                logging.warning("checkpoint step %d has no manifest (the run stopped right "
                                "after it committed); restoring it unverified", step)
            state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except _Mismatch:
            raise
        except Exception as e:
            if verified:  # the bytes are exactly as written: another model or diffjax version
                raise _Unfit(f"checkpoint step {step} in {self.directory} is intact but does "
                             f"not fit this run's state: {e}") from e
            raise
        if not _all_finite(state):
            raise CorruptCheckpointError("it holds non-finite values")
        return state if convert is None else convert[0](state, convert[1])

    def restore(self, step: int, target):
        """Restores step `step` onto `target` with the checks of `restore_latest`, without
        falling back to another step: raises ValueError naming what is wrong."""
        if step not in self.steps():
            raise FileNotFoundError(f"{self.directory} holds steps {self.steps()}, not {step}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            return self._read(step, abstract, state_shapes(target))
        except (_Mismatch, _Unfit) as e:
            raise DataError(str(e)) from e
        except Exception as e:  # noqa: BLE001 -- any other failure to read is corruption
            raise DataError(f"checkpoint step {step} in {self.directory} is corrupt: "
                            f"{type(e).__name__}: {e}") from e

    def restore_latest(self, target, quarantine: bool = True):
        """Restores the newest good step onto the shapes and shardings of `target` (a pytree of
        arrays or ShapeDtypeStructs). A step that fails its manifest, fails to read or holds
        non-finite values is logged with what was wrong, moved to checkpoints/corrupt/ (when
        `quarantine`; training does, read-only modes don't), and the previous step is tried.
        Returns (state, step), or (None, None) when no step is good."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        wanted = state_shapes(target)
        self.failures = []
        for step in reversed(self.steps()):
            try:
                return self._read(step, abstract, wanted), step
            except _Mismatch as e:  # readable, but another model: no corruption, so stop here
                raise DataError(str(e)) from None
            except _Unfit as e:
                raise DataError(str(e)) from e.__cause__
            except Exception as e:  # noqa: BLE001 -- any failure to read means: try an older step
                first_line = str(e).splitlines()[0] if str(e) else ""
                reason = f"{type(e).__name__}: {first_line}"
                self.failures.append(f"step {step}: {reason}")
                where = os.path.join(self.directory, CORRUPT_DIR)
                if quarantine:
                    self._quarantine(step, reason)
                message = (f"checkpoint step {step} in {self.directory} is corrupt ({reason}); "
                           + (f"moved it to {where}/ and " if quarantine else "")
                           + "falling back to the previous step")
                logging.warning(message)
                if jax.process_index() == 0:
                    print(f"warning: {message}", flush=True)
        return None, None

    def close(self) -> None:
        self.wait()
        self.manager.close()
