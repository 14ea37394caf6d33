"""Evaluation prompt sets (AlpacaEval, the Hewitt validation set, LIMA test, any JSON/JSONL file)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from rt_lab.data.datasets import resolve_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    id: str
    instruction: str
    dataset: str


def instruction_of(record: dict, format_name: str) -> str | None:
    if format_name == "lima_conversations":
        return (record.get("conversations") or [None])[0]
    if format_name == "instruction":
        return record.get("instruction")
    raise KeyError(f"unknown prompt format {format_name!r}; expected 'instruction' or 'lima_conversations'")


def load_prompts(cfg: Any, data_dir: str | None = None) -> list[Prompt]:
    source, reader, format_name = resolve_source(cfg, data_dir, kind="prompts")
    prompts: list[Prompt] = []
    for index, record in reader():
        instruction = instruction_of(record, format_name)
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"{source} row {index}: no instruction text (fields: {sorted(record)})")
        prompts.append(Prompt(str(record.get("id", index)), instruction, record.get("dataset", cfg.name)))
        if cfg.get("limit") and len(prompts) >= cfg.limit:
            break
    if len({p.id for p in prompts}) != len(prompts):
        raise ValueError(f"{source}: prompt ids are not unique")
    log.info("prompt set %s from %s: %d prompts", cfg.name, source, len(prompts))
    return prompts
