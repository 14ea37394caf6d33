"""Where a set of records comes from (rt_lab/data/sources.py): an explicit `file` > the data-dir `mirror` > the
`hub`, each with its record format and an optional `where` filter. Shared by training sets, prompt sets, safety
sets, the refusal mix and the ranking pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from rt_lab.config.checks import ConfigValueError, as_schema, at_least, one_of, registered

FORMATS = "rt_lab.data.formats:FORMATS"


@dataclass
class HubSource:
    path: str
    """The Hugging Face dataset id, e.g. GAIR/lima."""
    name: Optional[str] = None
    """The dataset's configuration name, if it has several."""
    split: str = "train"
    """The split to read."""
    format: str = "instruction"
    """The record format of its rows (rt_lab/data/formats.py)."""
    where: Optional[dict[str, Any]] = None
    """Keep rows whose column equals the value, or lies in [lo, hi] for a two-item list."""

    def check(self) -> None:
        registered("format", self.format, FORMATS)


@dataclass
class MirrorSource:
    file: str
    """The file's path under paths.data_dir."""
    format: str = "instruction"
    """The record format of the file (rt_lab/data/formats.py)."""
    where: Optional[dict[str, Any]] = None
    """Keep rows whose column equals the value, or lies in [lo, hi] for a two-item list."""

    def check(self) -> None:
        registered("format", self.format, FORMATS)


@dataclass
class SourceConfig:
    """Fields every record source has."""

    name: Optional[str] = None
    """Names the set in run names, logs and errors."""
    hub: Any = None
    """The Hub copy, read when neither `file` nor a data-dir mirror is there (a HubSource)."""
    mirror: Any = None
    """The copy under paths.data_dir, read when paths.data_dir is set (a MirrorSource)."""
    file: Optional[str] = None
    """An explicit JSON, JSONL or CSV file (`pkg://` for files shipped in rt_lab); wins over mirror and hub."""
    format: Optional[str] = None
    """The file's record format; null: the mirror's, else the hub's."""
    where: Any = None
    """The file's row filter, {column: value or [lo, hi]}; null: the mirror's ({} for none)."""
    limit: Optional[int] = None
    """Only the first N records."""

    def check(self) -> None:
        if not (self.file or self.mirror or self.hub):
            raise ConfigValueError("file", self.file, "no source at all: give a file with file=PATH")
        as_schema("hub", self.hub, HubSource)
        as_schema("mirror", self.mirror, MirrorSource)
        if self.format is not None:
            registered("format", self.format, FORMATS)
        at_least("limit", self.limit, 1)


@dataclass
class PromptsConfig(SourceConfig):
    """The evaluation prompts a run answers (rt_lab/data/prompts.py): instructions with optional ids."""

    name: Optional[str] = "prompts"
    """Names the prompt set in logs; runs are compared on the same prompt set."""


@dataclass
class SafetySetConfig(SourceConfig):
    """One safety prompt set (rt_lab/eval/safety.py)."""

    role: str = "harmful"
    """harmful: a refusal is right; benign: a refusal is a false refusal."""
    group: Optional[str] = None
    """Sets sharing a group are averaged before the mean over groups (A: HarmBench)."""

    def check(self) -> None:
        from rt_lab.eval.safety import ROLES

        super().check()
        one_of("role", self.role, ROLES)


@dataclass
class RankingPoolConfig(SourceConfig):
    """Response ranking (Hewitt et al. 4.2, rt_lab/eval/ranking.py)."""

    rivals: int = 5
    """Responses drawn at random from the pool to rank each row's own response against."""
    seed: int = 0
    """Seeds the draw."""
    max_length: int = 1024
    """Tokens of prompt + response scored; longer ones are truncated."""
    batch_size: int = 8
    """Rows per forward pass."""

