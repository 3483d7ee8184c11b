"""EMA plug-ins: averages of the network params kept in the train state. config.ema.name picks
one; its options are config.ema.<name>. An EMA provides init(params) -> state, update(state,
params, step) -> state (called with the params after each update, under the step's NaN guard),
keys() (what can be sampled, e.g. the rates), default_key and params(state, key). The state is a
pytree, checkpointed with the rest; EDM2's power-function EMA can register beside `fixed`."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from diffjax.errors import ConfigError
from diffjax.options import check
from diffjax.registry import Registry

EMAS = Registry("ema", "ema.name", "ema")


def decay_at(step, decay: float, warmup: bool):
    """EMA decay at update `step`: constant, or min(decay, (1 + k) / (10 + k)) with warmup."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    k = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + k) / (10.0 + k))


@dataclasses.dataclass(frozen=True)
class FixedRateOptions:
    """decays: one EMA of the params per rate; the first is the default for grids, sampling and
    evaluation. warmup: decay_k = min(decay, (1 + k) / (10 + k)) for every rate."""

    decays: tuple[float, ...] = (0.9999,)
    warmup: bool = False

    def __post_init__(self):
        decays = tuple(self.decays)
        check(bool(decays) and all(isinstance(d, float) and 0 <= d < 1 for d in decays),
              "decays", decays, "must be a non-empty tuple of floats in [0, 1), e.g. (0.9999,)")
        check(len(set(decays)) == len(decays), "decays", decays, "rates must be distinct")


@dataclasses.dataclass(frozen=True)
class FixedRateEMA:
    """e_k = d_k e_(k-1) + (1 - d_k) p_k for each rate, one code path for one rate or several.
    The state is a tuple of param trees, one per rate, in the order of `decays`."""

    decays: tuple[float, ...] = (0.9999,)
    warmup: bool = False

    def init(self, params) -> tuple:
        return (params,) * len(self.decays)

    def update(self, state: tuple, params, step) -> tuple:
        def one(ema, rate):
            d = decay_at(step, rate, self.warmup)
            return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)

        return tuple(one(ema, rate) for ema, rate in zip(state, self.decays))

    def keys(self) -> tuple[float, ...]:
        return self.decays

    @property
    def default_key(self) -> float:
        return self.decays[0]

    def params(self, state: tuple, key: float) -> Any:
        """The EMA at rate `key` (one of `decays`)."""
        if key not in self.decays:
            raise ConfigError(f"config.sampling.ema_decays contains {key}, which this run does "
                              f"not keep; allowed: {', '.join(map(str, self.decays))} "
                              f"(config.ema.fixed.decays) or 0.0 (the raw params)")
        return state[self.decays.index(key)]


@EMAS.register("fixed", options=FixedRateOptions)
def fixed(options: FixedRateOptions) -> FixedRateEMA:
    return FixedRateEMA(tuple(options.decays), bool(options.warmup))


def make_ema(name: str, options=None):
    """The EMA registered as `name` (options None: its defaults)."""
    entry = EMAS.get(name)
    return entry.factory(options if options is not None else entry.default_options())
