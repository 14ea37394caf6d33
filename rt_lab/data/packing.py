"""Packing without cross-contamination: best-fit-decreasing bins, and position ids that restart at every sequence,
from which transformers keeps attention inside each sequence."""

from __future__ import annotations

import bisect
from typing import Sequence

import torch

from rt_lab.data.masking import Example


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


def collate_packed(examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """One flattened row whose position ids restart at every sequence, and no attention mask: transformers then
    keeps attention inside each sequence itself, for every attention implementation (a block-causal mask for
    sdpa/eager/flex, varlen kernels for flash attention; `masking_utils.find_packed_sequence_indices`). That holds
    only without a KV cache: the loss always runs with `use_cache=False`. Every example's first label is already
    ignored, so no token is trained to follow the previous sequence."""
    return {
        "input_ids": torch.tensor([sum((e.input_ids for e in examples), [])]),
        "labels": torch.tensor([sum((e.labels for e in examples), [])]),
        "position_ids": torch.cat([torch.arange(len(e.input_ids)) for e in examples])[None],
    }
