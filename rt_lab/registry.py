"""Named implementations that users extend in a few lines (dataset formats, user-turn transforms, rules,
judges): `THINGS = Registry("thing")`, then `@THINGS.register("name")` on a function or class."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

T = TypeVar("T")


class Registry(dict):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(implementation: T) -> T:
            self[name] = implementation
            return implementation

        return decorator

    def lookup(self, name: str, key: str) -> Any:
        """The implementation named by config key `key`, or an error listing the registered ones."""
        if name not in self:
            raise KeyError(f"{key}={name!r} is not a registered {self.kind}; choose one of {sorted(self)}")
        return self[name]
