"""SIGTERM/SIGINT -> a flag checked between steps, so a preempted run checkpoints and exits."""

from __future__ import annotations

import signal
import threading

import jax


class StopSignal:
    """A context manager whose should_stop(step) turns true after SIGTERM or SIGINT.

    Multi-host runs use jax's preemption sync point instead (jax.distributed owns SIGTERM there),
    so that every process stops after the same step. A second SIGINT interrupts at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if jax.process_index() == 0:
            print(f"\nreceived {signal.Signals(signum).name}: finishing this step, then "
                  f"checkpointing", flush=True)

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.signum = self.signum or signal.SIGTERM
                    return True
            except RuntimeError:  # preemption service disabled
                pass
            return False
        return self.signum is not None

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
