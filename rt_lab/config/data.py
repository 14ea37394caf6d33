"""`data/`: training rows as optimizer steps (rt_lab/data/datamodule.py, rt_lab/data/packing.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rt_lab.config.checks import at_least


@dataclass
class DataConfig:
    max_length: int = 2048
    """Tokens per row; longer rows are truncated (a row left with no supervised token is dropped, and said)."""
    batch_size: int = 8
    """Rows per optimizer step, across all devices."""
    micro_batch_size: int = 4
    """Rows per forward pass: gradient accumulation = batch_size / micro_batch_size / devices."""
    packing: bool = False
    """Pack a step's rows into bins of pack_length tokens; attention stays inside each row, the loss is the same."""
    pack_length: Optional[int] = None
    """Tokens per bin; null: micro_batch_size * max_length, a padded micro-batch's token budget."""
    shuffle: bool = True
    """Shuffle the rows every epoch."""
    seed: int = "${trainer.seed}"  # type: ignore[assignment]
    """Seeds the per-epoch shuffle order."""

    def check(self) -> None:
        for key in ("max_length", "batch_size", "micro_batch_size", "pack_length"):
            at_least(key, getattr(self, key), 1)
