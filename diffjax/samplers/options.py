"""The options every grid-walking sampler shares: the number of grid times and their spacing."""

from __future__ import annotations

import dataclasses

from diffjax.options import check, choice
from diffjax.samplers.grids import SPACINGS


@dataclasses.dataclass(frozen=True)
class GridOptions:
    """num_steps grid times K, spaced by `spacing` (rho: the 'karras' spacing's exponent). NFE for
    K grid times: K for most samplers, 2K - 1 for heun, K (1 + corrector_steps) for pc."""

    num_steps: int = 50
    spacing: str = "uniform"
    rho: float = 7.0

    def __post_init__(self):
        check(self.num_steps >= 1, "num_steps", self.num_steps, "must be >= 1")
        choice("spacing", self.spacing, SPACINGS)
        check(self.rho > 0, "rho", self.rho, "must be > 0")
