"""Options dataclasses: every part's options are a frozen dataclass that checks itself in
`__post_init__` and raises OptionError naming the field. The config builder turns a config
section into such a dataclass with `from_mapping`, which adds the section's path to the message,
so errors read `config.sampling.heun.s_churn=-1.0 is invalid: must be >= 0`."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from diffjax.errors import ConfigError


class OptionError(ConfigError):
    """A bad option value: `field`, `value` and the rule or the allowed values."""

    def __init__(self, field: str, value: Any, rule: str):
        self.field, self.value, self.rule = field, value, rule
        super().__init__(f"{field}={value!r} {rule}")

    def at(self, path: str) -> ConfigError:
        """The same error with the config section's path in front of the field."""
        return ConfigError(f"config.{path}.{self.field}={self.value!r} {self.rule}")


def check(ok: bool, field: str, value: Any, rule: str) -> None:
    """Raises OptionError(field, value, 'is invalid: <rule>') unless ok."""
    if not ok:
        raise OptionError(field, value, f"is invalid: {rule}")


def choice(field: str, value: Any, allowed) -> None:
    """Raises OptionError unless value is one of `allowed`."""
    if value not in allowed:
        raise OptionError(field, value, f"is unknown; allowed: {', '.join(map(str, allowed))}")


def int_tuple(field: str, value: Any) -> tuple[int, ...]:
    """`value` as a tuple of ints, or an OptionError."""
    if isinstance(value, (int, str)) or not all(isinstance(v, int) for v in value):
        raise OptionError(field, value, "must be a tuple or list of ints")
    return tuple(value)


def _coerce(value: Any, default: Any) -> Any:
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


def from_mapping(cls: type, values: Mapping[str, Any], path: str) -> Any:
    """Builds options dataclass `cls` from a config section (a mapping) at `path` (e.g.
    'sampling.heun'). Unknown fields and bad values raise ConfigError naming config.<path>.<field>;
    fields the section lacks keep their defaults; lists become tuples, ints become floats where
    the default is a float."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"config.{path} has no field {unknown[0]!r}; its fields are: "
                          f"{', '.join(sorted(fields)) or 'none'}")
    defaults = cls()
    kwargs = {k: _coerce(v, getattr(defaults, k)) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except OptionError as e:
        raise e.at(path) from None
