"""The value checks of the schemas (their `check` methods, which rt_lab.config.validate calls): each raises a
`ConfigValueError` naming the key relative to its schema, the value, why it is refused and what would do; the
validation adds the key's full path."""

from __future__ import annotations

import importlib
from typing import Any, Iterable


class ConfigValueError(ValueError):
    def __init__(self, key: str, value: Any, why: str) -> None:
        super().__init__(f"{key}={value!r}: {why}")
        self.key, self.value, self.why = key, value, why


def one_of(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigValueError(key, value, f"expected one of {choices}")


def registered(key: str, value: Any, registry: str) -> None:
    """`value` names an entry of the registry at `module:NAME` (imported now: registries fill on import)."""
    module, name = registry.split(":")
    entries = getattr(importlib.import_module(module), name)
    if value not in entries:
        raise ConfigValueError(key, value, f"not a registered {entries.kind}; choose one of {sorted(entries)}")


def at_least(key: str, value: float | int | None, low: float | int) -> None:
    if value is not None and value < low:
        raise ConfigValueError(key, value, f"must be at least {low}")


def in_range(key: str, value: float | None, low: float, high: float, high_open: bool = False) -> None:
    """low <= value <= high (or < high)."""
    if value is None:
        return
    if not (low <= value < high if high_open else low <= value <= high):
        raise ConfigValueError(key, value, f"must be in [{low}, {high}{')' if high_open else ']'}")


def as_schema(key: str, value: Any, schema: type) -> Any:
    """`value`, a mapping or None, read as dataclass `schema` and checked. For the fields a command line sets to a
    whole mapping (dataset.sample={n: 1000, seed: 0}): OmegaConf 2.3 cannot merge one into a None field typed by a
    dataclass or a dict, so those fields are typed Any in the config and meet their schema here."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if value is None:
        return None
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), value))
    except OmegaConfBaseException as err:
        raise ConfigValueError(key, value, err.msg if hasattr(err, "msg") else str(err)) from err
    check = getattr(typed, "check", None)
    if check is not None:
        try:
            check()
        except ConfigValueError as err:
            raise ConfigValueError(f"{key}.{err.key}", err.value, err.why) from err
    return typed
