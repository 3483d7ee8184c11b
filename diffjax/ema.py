"""EMA plug-ins: averages of the network params kept in the train state. config.ema.name picks
one; its options are config.ema.<name>. An EMA provides init(params) -> state, update(state,
params, step) -> state (called with the params after each update, under the step's NaN guard),
keys() (what can be sampled, e.g. the rates), default_key and params(state, key). The state is a
pytree, checkpointed with the rest. `fixed` keeps constant-rate EMAs; `power` keeps EDM2's
power-function profiles, whose snapshots (config.ema.snapshot_every) let a run choose its EMA
length after training (config.ema.sigma_rel; diffjax.posthoc_ema)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from diffjax.core import power_ema
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


class PerKeyEMA:
    """One EMA of the params per key, e_k = d_k e_(k-1) + (1 - d_k) p_k, one code path for one
    key or several. The state is a tuple of param trees in the order of keys(); the first key is
    the default. Subclasses give keys(), decay(step, key) and `allowed` (how the error names the
    config field that lists the keys)."""

    allowed = ""

    def keys(self) -> tuple[float, ...]:
        raise NotImplementedError

    def decay(self, step, key: float):
        raise NotImplementedError

    def init(self, params) -> tuple:
        return (params,) * len(self.keys())

    def update(self, state: tuple, params, step) -> tuple:
        def one(ema, key):
            d = self.decay(step, key)
            return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)

        return tuple(one(ema, key) for ema, key in zip(state, self.keys()))

    @property
    def default_key(self) -> float:
        return self.keys()[0]

    def params(self, state: tuple, key: float) -> Any:
        """The EMA kept under `key` (one of keys())."""
        if key not in self.keys():
            raise ConfigError(f"config.sampling.ema_decays contains {key}, which this run does "
                              f"not keep; allowed: {', '.join(map(str, self.keys()))} "
                              f"{self.allowed}")
        return state[self.keys().index(key)]


@dataclasses.dataclass(frozen=True)
class FixedRateEMA(PerKeyEMA):
    """Constant-rate EMAs, d_k = decay (with warmup: min(decay, (1 + k) / (10 + k))), one per
    rate in `decays`; the keys are the rates."""

    decays: tuple[float, ...] = (0.9999,)
    warmup: bool = False
    allowed = "(config.ema.fixed.decays) or 0.0 (the raw params)"

    def keys(self) -> tuple[float, ...]:
        return self.decays

    def decay(self, step, key: float):
        return decay_at(step, key, self.warmup)


@EMAS.register("fixed", options=FixedRateOptions)
def fixed(options: FixedRateOptions) -> FixedRateEMA:
    return FixedRateEMA(tuple(options.decays), bool(options.warmup))


def make_ema(name: str, options=None):
    """The EMA registered as `name` (options None: its defaults)."""
    entry = EMAS.get(name)
    return entry.factory(options if options is not None else entry.default_options())


@dataclasses.dataclass(frozen=True)
class PowerOptions:
    """sigma_rels: the widths of EDM2's power-function profiles kept in training (EDM2 Sec. 3.1:
    0.05 and 0.10); the first is the default for grids, sampling and evaluation."""

    sigma_rels: tuple[float, ...] = (0.05, 0.10)

    def __post_init__(self):
        widths = tuple(self.sigma_rels)
        limit = power_ema.MAX_SIGMA_REL
        check(bool(widths) and all(isinstance(s, float) and 0 < s < limit for s in widths),
              "sigma_rels", widths, f"must be a non-empty tuple of floats in (0, {limit:.4f}), "
              f"e.g. (0.05, 0.10)")
        check(len(set(widths)) == len(widths), "sigma_rels", widths, "widths must be distinct")


@dataclasses.dataclass(frozen=True)
class PowerEMA(PerKeyEMA):
    """EDM2's power-function EMA: d_t = beta_t = (1 - 1/t)^(gamma + 1), one profile per
    sigma_rel (gamma from EDM2 eq. 3); the keys are the sigma_rels."""

    sigma_rels: tuple[float, ...] = (0.05, 0.10)
    allowed = ("(config.ema.power.sigma_rels), 0.0 (the raw params), or another width post hoc "
               "with config.ema.sigma_rel")

    def keys(self) -> tuple[float, ...]:
        return self.sigma_rels

    def decay(self, step, key: float):
        return power_ema.beta(step, float(power_ema.gamma_of_sigma_rel(key)))


@EMAS.register("power", options=PowerOptions)
def power(options: PowerOptions) -> PowerEMA:
    return PowerEMA(tuple(float(s) for s in options.sigma_rels))


# Fields of config.ema beside `name` and the parts' sections.
SECTION_FIELDS = ("snapshot_every", "sigma_rel")


@dataclasses.dataclass(frozen=True)
class PosthocOptions:
    """config.ema.snapshot_every: save every EMA profile to WORKDIR/ema_snapshots every N steps
    (and at the last step); 0: none. config.ema.sigma_rel: sample and evaluate the EMA of this
    width reconstructed post hoc from those snapshots (EDM2 Sec. 3.2); 0: the tracked EMA."""

    snapshot_every: int = 0
    sigma_rel: float = 0.0

    def __post_init__(self):
        check(isinstance(self.snapshot_every, int) and self.snapshot_every >= 0,
              "snapshot_every", self.snapshot_every, "must be an int >= 0 (0: no snapshots)")
        limit = power_ema.MAX_SIGMA_REL
        check(isinstance(self.sigma_rel, (int, float)) and 0 <= self.sigma_rel < limit,
              "sigma_rel", self.sigma_rel,
              f"must be 0 (the tracked EMA) or a width in (0, {limit:.4f}), e.g. 0.07")
