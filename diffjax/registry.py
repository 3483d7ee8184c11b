"""Registries of plug-ins. Each kind of part (network, objective, sampler, codec, conditioning,
schedule, EMA, metric) has one registry; a part registers under a name with the dataclass of its
options, and the config picks it by that name. A user's module, imported by their config file,
registers parts the same way:

    @SAMPLERS.register("my_sampler", options=MySamplerOptions)
    def my_sampler(pred, ts, x, rng, opts): ...

Its options then live in their own config section (`config.sampling.my_sampler`), built from the
dataclass defaults by `section_defaults`."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from diffjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered part: its name, the factory that builds it and its options dataclass
    (None: it takes no options)."""

    name: str
    factory: Callable
    options: type | None = None

    def default_options(self) -> Any:
        """The options dataclass with every field at its default (None without options)."""
        return self.options() if self.options is not None else None


class Registry:
    """Names -> Entry for one kind of part. `key` is the config field that selects the part,
    e.g. 'model.name'; the options of part NAME live in the config section `section`.NAME."""

    def __init__(self, kind: str, key: str, section: str):
        self.kind, self.key, self.section = kind, key, section
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, options: type | None = None) -> Callable:
        """Decorator: registers `factory` under `name` with its options dataclass."""
        if options is not None and not dataclasses.is_dataclass(options):
            raise TypeError(f"{self.kind} {name!r}: options must be a dataclass, got {options!r}")

        def decorate(factory: Callable) -> Callable:
            old = self._entries.get(name)
            where = lambda f: (getattr(f, "__module__", None), f.__qualname__)  # noqa: E731
            if old is not None and where(old.factory) != where(factory):
                raise ValueError(f"{self.kind} {name!r} is already registered by "
                                 f"{old.factory.__module__}.{old.factory.__qualname__}")
            self._entries[name] = Entry(name, factory, options)
            return factory

        return decorate

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry:
        """The entry of `name`; a ConfigError naming the key and the registered names if none."""
        if name not in self._entries:
            raise ConfigError(f"config.{self.key}={name!r} is unknown; allowed: "
                              f"{', '.join(self._entries)}")
        return self._entries[name]


def section_defaults(options: type | None) -> dict[str, Any]:
    """{field: default} of an options dataclass ({} for None): the part's config section."""
    if options is None:
        return {}
    return {f.name: getattr(options(), f.name) for f in dataclasses.fields(options)}
