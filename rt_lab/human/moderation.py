"""Screening items before raters see them (An et al. screened outputs for harmful content): a moderation filter
reads an item's instruction and both responses and returns a `Moderation` (hide the item, or show it under a
warning) or None. Built in: a regular expression (`--hide REGEX`, `--flag REGEX`); any other filter is a Python
callable named `module:function` (`--moderation`), e.g. one asking a safety classifier."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

ACTIONS = ("hide", "flag")


@dataclass(frozen=True)
class Moderation:
    action: Literal["hide", "flag"]  # hide: no rater sees the item; flag: raters see it under a warning
    reason: str

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"Moderation action {self.action!r}: expected one of {list(ACTIONS)}")


ModerationFilter = Callable[[str, Sequence[str]], "Moderation | None"]  # (instruction, responses) -> verdict


def regex_filter(pattern: str, action: Literal["hide", "flag"]) -> ModerationFilter:
    """A filter matching `pattern` (case-insensitive) anywhere in the instruction or a response."""
    try:
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error as err:
        raise ValueError(f"--{action} {pattern!r}: not a regular expression ({err})") from err

    def moderate(instruction: str, responses: Sequence[str]) -> Moderation | None:
        for where, text in (("instruction", instruction), *(("a response", r) for r in responses)):
            found = compiled.search(text)
            if found:
                return Moderation(action, f"{where} matches /{pattern}/ ({found.group(0)[:40]!r})")
        return None

    return moderate


def load_filter(spec: str) -> ModerationFilter:
    """The callable `module:function` names (it takes (instruction, responses) and returns a Moderation or
    None)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--moderation {spec!r}: expected module:function, e.g. my_filters:screen")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--moderation {spec!r}: cannot import {module_name} ({err})") from err
    found = getattr(module, attribute, None)
    if not callable(found):
        raise ValueError(f"--moderation {spec!r}: {module_name} has no callable {attribute}")
    return found


def moderate(filters: Sequence[ModerationFilter], instruction: str, responses: Sequence[str]) -> Moderation | None:
    """The first verdict to hide, else the first to flag, else None."""
    verdicts = [verdict for screen in filters if (verdict := screen(instruction, responses)) is not None]
    for verdict in verdicts:
        if not isinstance(verdict, Moderation):
            raise TypeError(f"a moderation filter returned {verdict!r}; expected a rt_lab.human.Moderation or None")
    return next((v for v in verdicts if v.action == "hide"), verdicts[0] if verdicts else None)
