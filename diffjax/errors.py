"""Exceptions that end a run with a clear message (launch.py prints them without a traceback).

Kept free of JAX imports so launch.py can catch them before any backend starts."""

from __future__ import annotations

import signal


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGINT after committing a checkpoint at `step`."""

    def __init__(self, signum: int, step: int, directory: str):
        self.signum, self.step = signum, step
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after step {step}: checkpoint step {step} is "
                         f"committed in {directory}; run the same command to resume")


class NonFiniteError(RuntimeError):
    """Loss or gradient non-finite for config.training.max_nonfinite_steps steps in a row."""
