"""Exceptions that end a run with a clear message (launch.py prints them without a traceback).

Kept free of JAX imports so launch.py can catch them before any backend starts. Only these, and
disk errors (OSError), become one-line messages; any other exception is a bug and keeps its
traceback."""

from __future__ import annotations

import signal


class ConfigError(ValueError):
    """Bad input: a config key, value, flag or workdir that cannot work. The message names the
    key, the value and what is allowed."""


class DataError(ValueError):
    """Data that exists but cannot be used: a split that is empty, images of the wrong shape, a
    checkpoint that is corrupt. Missing files raise FileNotFoundError instead."""


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGINT after committing a checkpoint at `step`."""

    def __init__(self, signum: int, step: int, directory: str):
        self.signum, self.step = signum, step
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after step {step}: checkpoint step {step} is "
                         f"committed in {directory}; run the same command to resume")


class NonFiniteError(RuntimeError):
    """Loss or gradient non-finite for config.training.max_nonfinite_steps steps in a row."""
