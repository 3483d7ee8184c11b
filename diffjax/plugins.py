"""Config sections from the registries: a plug-in kind's section holds `name` (or another
selector) and one sub-section per registered part with its options' defaults, so any registered
part can be picked and tuned from the command line. A user's parts get their sections when their
module is imported before the base config is built (at the top of their config file)."""

from __future__ import annotations

import dataclasses

import ml_collections

from diffjax import codecs, conditioning, ema  # noqa: F401  (import = register the built-ins)
from diffjax.core import parameterizations, schedules  # noqa: F401
from diffjax.evaluation import scores
from diffjax.models import NETWORKS
from diffjax.objectives import OBJECTIVES
from diffjax.registry import Registry, section_defaults
from diffjax.samplers import SAMPLERS

KINDS: dict[str, Registry] = {
    "codec": codecs.CODECS, "conditioning": conditioning.CONDITIONINGS, "model": NETWORKS,
    "diffusion": schedules.SCHEDULES, "objective": OBJECTIVES, "ema": ema.EMAS,
    "sampling": SAMPLERS, "eval": scores.METRICS,
}


def settings_section(options_cls) -> ml_collections.ConfigDict:
    """A ConfigDict of an options dataclass's fields at their defaults."""
    return ml_collections.ConfigDict(section_defaults(options_cls))


def section(registry: Registry, **fields) -> ml_collections.ConfigDict:
    """`fields` (e.g. name='unet') plus one sub-section per registered part of `registry`."""
    out = ml_collections.ConfigDict(fields)
    for name in registry.names():
        out[name] = ml_collections.ConfigDict(section_defaults(registry.get(name).options))
    return out


def settings_with_parts(options_cls, registry: Registry) -> ml_collections.ConfigDict:
    """A settings section (e.g. config.sampling) with the parts of `registry` as sub-sections."""
    return section(registry, **{f.name: getattr(options_cls(), f.name)
                                for f in dataclasses.fields(options_cls)})
