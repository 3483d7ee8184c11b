"""Orbax checkpoints: async save, keep-N, restore of the newest step that reads back cleanly."""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Wraps an orbax CheckpointManager under WORKDIR/checkpoints (absolute path)."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state, force: bool = False) -> bool:
        """Starts an (async) save of `state` at `step`; returns whether a save was started."""
        return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, target):
        """Restores the newest readable step onto the shardings of `target` (a state pytree of
        arrays or ShapeDtypeStructs). Falls back to older steps when the newest fails to read,
        logging what was wrong. Returns (state, step) or (None, None) when there is none."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        for step in reversed(self.steps()):
            try:
                state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
                return state, step
            except Exception as e:  # corrupt or incompatible step: try the previous one
                logging.warning("checkpoint step %d in %s could not be restored (%s: %s); "
                                "falling back to the previous step", step, self.directory,
                                type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return None, None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
