"""Learning-rate schedules by name, with warmup given as a fraction of all optimizer steps."""

from __future__ import annotations

from typing import Any

import torch
from transformers import get_scheduler

SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def build_schedule(optimizer: torch.optim.Optimizer, name: str, warmup_ratio: float, total_steps: int) -> Any:
    if name not in SCHEDULES:
        raise KeyError(f"trainer.schedule.name={name!r} is unknown; choose one of {sorted(SCHEDULES)}")
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"trainer.schedule.warmup_ratio={warmup_ratio} must be in [0, 1)")
    warmup = round(warmup_ratio * total_steps)
    return get_scheduler(SCHEDULES[name], optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
