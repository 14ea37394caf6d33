"""Evaluation prompt sets (AlpacaEval, the Hewitt validation set, LIMA test, any record file): the first user
turn of each record, in any registered record format (rt_lab.data.formats)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from rt_lab.config.source import PromptsConfig
from rt_lab.data.formats import LoadStats, instruction_of
from rt_lab.data.sources import resolve_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    id: str
    instruction: str
    dataset: str


def load_prompts(cfg: PromptsConfig, data_dir: str | None = None) -> list[Prompt]:
    source = resolve_source(cfg, data_dir, "prompts")
    prompts: list[Prompt] = []
    for conversation in source.conversations(LoadStats()):
        prompts.append(Prompt(conversation.id, instruction_of(conversation, source.name),
                              conversation.record.get("dataset", cfg.name)))
        if cfg.get("limit") and len(prompts) >= cfg.limit:
            break
    if len({p.id for p in prompts}) != len(prompts):
        raise ValueError(f"{source.name}: prompt ids are not unique")
    log.info("prompt set %s from %s: %d prompts", cfg.name, source.name, len(prompts))
    return prompts
