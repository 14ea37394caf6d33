"""Learning-rate schedules by name, with warmup given as a fraction of all optimizer steps (the names and the
ratio are checked by the schema: rt_lab/config/trainer.py)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import get_scheduler

SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def build_schedule(optimizer: torch.optim.Optimizer, name: str, warmup_ratio: float, total_steps: int) -> Any:
    warmup = round(warmup_ratio * total_steps)
    return get_scheduler(SCHEDULES[name], optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
