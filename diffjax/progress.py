"""Progress bars with an ETA for every long step (training, sampling, features, likelihood),
drawn by process 0 only, on stderr."""

from __future__ import annotations

import jax


def bar(total: int | None, unit: str, desc: str | None = None, initial: int = 0,
        enabled: bool = True):
    """A tqdm bar of `total` units (None: a counter without an ETA); a disabled bar on every
    process but 0, or when not `enabled`."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True,
                disable=not enabled or jax.process_index() != 0)
