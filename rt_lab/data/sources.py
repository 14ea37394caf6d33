"""Where records come from, for every reader of data (training sets, the refusal mix, prompt sets, safety sets,
the ranking pool): an explicit `file` > the data-dir `mirror` (when paths.data_dir is set) > the `hub` (also for
the sets without a mirror, unless the Hub is off), each with its own record `format` and optional `where` filter.
A file inherits the mirror's format and filter unless it sets its own (`where: {}` for none), since a file given in
place of the mirror is usually a copy of it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import OmegaConf

from rt_lab.config.source import SourceConfig
from rt_lab.data.formats import FORMATS, Conversation, Format, LoadStats, Records, training_rows
from rt_lab.data.rows import Row
from rt_lab.io import package_path, read_records


@dataclass(frozen=True)
class Source:
    name: str  # the file, or the Hub id and split: every error starts with it
    read: Callable[[], Records]
    format: Format
    where: dict

    def records(self, stats: LoadStats) -> Iterator[tuple[int, dict]]:
        """The records that pass `where`: {column: value} keeps equal values (compared as text, as CSV gives
        them), {column: [lo, hi]} keeps values in the inclusive range."""
        for index, record in self.read():
            stats.read += 1
            if all(self.matches(record, column, wanted, index) for column, wanted in self.where.items()):
                yield index, record
            else:
                stats.leave_out(f"where {sorted(self.where)}")
        if not stats.read:
            raise ValueError(f"{self.name}: no records (an empty file?)")

    def matches(self, record: dict, column: str, wanted: Any, index: int) -> bool:
        if column not in record:
            raise ValueError(f"{self.name} row {index}: no column {column!r} to select on (where); columns: "
                             f"{sorted(record)}")
        if OmegaConf.is_list(wanted) or isinstance(wanted, (list, tuple)):
            low, high = wanted
            try:
                return low <= record[column] <= high
            except TypeError as err:  # e.g. a CSV's text against a numeric range
                raise ValueError(f"{self.name} row {index}: {column}={record[column]!r} cannot be compared with "
                                 f"the where range {list(wanted)}") from err
        return str(record[column]) == str(wanted)

    def conversations(self, stats: LoadStats) -> Iterator[Conversation]:
        return self.format(self.records(stats), self.name, stats)

    def rows(self, stats: LoadStats) -> Iterator[Row]:
        return training_rows(self.conversations(stats), self.name)


def resolve_source(cfg: SourceConfig, data_dir: str | None, key: str) -> Source:
    """The source config `key` (`dataset`, `prompts`, `eval.safety.catalog.advbench`, ...) reads from; errors name
    the key to set."""
    label = f"{key}={cfg.name}" if cfg.get("name") else key
    mirror = cfg.get("mirror") or {}
    if cfg.get("file"):
        path = package_path(cfg.file)
        format_key, where = f"{key}.format", cfg.get("where")
        name = cfg.get("format") or mirror.get("format") or (cfg.get("hub") or {}).get("format")
        return source(str(path), lambda: read_records(path), name, format_key,
                      mirror.get("where") if where is None else where)
    if data_dir and not mirror and (not cfg.get("hub") or hub_offline()):
        hub_format = f" (format {cfg.hub.format!r})" if cfg.get("hub") else ""
        raise FileNotFoundError(f"{label}: paths.data_dir is set but there is no local mirror of it"
                                f"{' (and the Hub is off: HF_HUB_OFFLINE)' if cfg.get('hub') else ''}; give a "
                                f"file with {key}.file=PATH{hub_format}")
    if data_dir and mirror:
        path = Path(data_dir).expanduser() / mirror.file
        if not path.is_file():
            raise FileNotFoundError(f"{label}: paths.data_dir={data_dir} but {path} does not exist; put it there or "
                                    f"give the file with {key}.file=PATH")
        return source(str(path), lambda: read_records(path), mirror.get("format"), f"{key}.mirror.format",
                      mirror.get("where"))
    if not cfg.get("hub"):
        raise ValueError(f"{label}: no hub id, no mirror and no file configured")
    hub = cfg.hub

    def hub_records() -> Records:
        import datasets

        return enumerate(datasets.load_dataset(hub.path, hub.get("name"), split=hub.split))

    name = f"{hub.path}" + (f"/{hub.name}" if hub.get("name") else "") + f" [{hub.split}]"
    return source(name, hub_records, hub.get("format"), f"{key}.hub.format", hub.get("where"))


def hub_offline() -> bool:
    """Whether Hugging Face's libraries are told to stay off the Hub."""
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes") for name in ("HF_HUB_OFFLINE",
                                                                                     "HF_DATASETS_OFFLINE"))


def source(name: str, read: Callable[[], Records], format_name: str | None, format_key: str,
           where: Any) -> Source:
    if not format_name:
        raise ValueError(f"{name}: no record format; set {format_key}=NAME, one of {sorted(FORMATS)}")
    return Source(name, read, FORMATS.lookup(format_name, f"{name}: {format_key}"), dict(where or {}))
