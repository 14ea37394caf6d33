"""Packing without cross-contamination: best-fit-decreasing bins, per-sequence positions, and attention kept
inside each sequence (an exact block-diagonal mask, or position ids alone for flash-attention varlen)."""

from __future__ import annotations

import bisect
from typing import Sequence

import torch

from rt_lab.data.masking import Example

FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3")


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins of total length <= capacity, longest items first, each into the fullest
    bin that still fits it."""
    if any(length > capacity for length in lengths):
        raise ValueError(f"an item of length {max(lengths)} exceeds the bin capacity {capacity}")
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin index), kept sorted
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        slot = bisect.bisect_left(free, (length, -1))
        if slot == len(free):
            bins.append([index])
            bisect.insort(free, (capacity - length, len(bins) - 1))
        else:
            space, bin_index = free.pop(slot)
            bins[bin_index].append(index)
            bisect.insort(free, (space - length, bin_index))
    return bins


def block_diagonal_mask(lengths: Sequence[int], additive: bool) -> torch.Tensor:
    """(1, 1, T, T) mask: token i sees token j iff both are in one sequence and j <= i. Boolean (True = attend)
    for sdpa; additive float (0 / -inf) for eager attention, which adds the mask to the scores."""
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    total = int(segment.numel())
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    allowed = causal & (segment[:, None] == segment[None, :])
    if not additive:
        return allowed[None, None]
    mask = torch.zeros(total, total).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return mask[None, None]


def collate_packed(examples: Sequence[Example], attn_implementation: str | None) -> dict[str, torch.Tensor]:
    """One flattened row. Every example's first label is already ignored, so no token is trained to follow
    the previous sequence."""
    lengths = [len(example.input_ids) for example in examples]
    batch = {
        "input_ids": torch.tensor([sum((e.input_ids for e in examples), [])]),
        "labels": torch.tensor([sum((e.labels for e in examples), [])]),
        "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
    }
    if attn_implementation not in FLASH_IMPLEMENTATIONS:
        batch["attention_mask"] = block_diagonal_mask(lengths, additive=attn_implementation != "sdpa")
    return batch
