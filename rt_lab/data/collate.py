"""Rows of tokens as one right-padded batch: what training, the loss and response ranking feed the model."""

from __future__ import annotations

from typing import Sequence

import torch

from rt_lab.data.masking import IGNORE, Example

Batch = dict[str, torch.Tensor]


def collate_padded(examples: Sequence[Example], pad_id: int) -> Batch:
    width = max(len(example.input_ids) for example in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}
