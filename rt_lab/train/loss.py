"""The training loss of one optimizer step, and how it is normalised.

Every micro-batch yields per-example sums of next-token cross-entropies and supervised-token counts (an example is
a row of a padded micro-batch or a segment of a packed one). A normalisation turns them into a numerator per
micro-batch and a number of units for the whole step, so the step's loss is (sum of numerators) / (units over the
window and every rank): the micro-batch split, packing and device count never change it.

- `token`: sum of token losses / supervised tokens of the step (every token weighs the same; TRL's default).
- `sequence`: mean over the step's examples of each example's mean token loss (every example weighs the same;
  open-instruct's `reduce_loss=mean` with one row per device, Hewitt et al.'s setting).

Add one with `LOSS_NORMALIZATIONS["name"] = Normalization(units=..., numerator=...)` (module-level functions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from rt_lab.data.masking import IGNORE
from rt_lab.registry import Registry

Batch = dict[str, torch.Tensor]


def target_examples(batch: Batch) -> tuple[torch.Tensor, int]:
    """For every next-token target (labels[:, 1:]) the index of the example it belongs to, numbered across the
    micro-batch, and the number of indices. Packed rows start a new example wherever position ids restart."""
    labels = batch["labels"]
    if "position_ids" in batch:
        segment = (batch["position_ids"] == 0).long().cumsum(dim=-1) - 1
    else:
        segment = torch.zeros_like(labels)
    per_row = int(segment.max()) + 1
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None]
    return (segment + rows * per_row)[:, 1:], labels.shape[0] * per_row


def example_counts(batch: Batch) -> torch.Tensor:
    """Supervised targets of each example that has any, in micro-batch order (no forward pass needed)."""
    index, size = target_examples(batch)
    supervised = batch["labels"][:, 1:] != IGNORE
    counts = torch.zeros(size, dtype=torch.long, device=index.device).scatter_add_(
        0, index[supervised], torch.ones_like(index[supervised]))
    return counts[counts > 0]


def example_loss_sums(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token cross-entropies, supervised targets) of each example with any, in micro-batch order.

    Logits are computed only at positions whose next token carries loss (`logits_to_keep`), which skips the
    vocabulary projection for prompts and padding."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids") if key in batch}
    targets = batch["labels"][:, 1:]
    keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
    targets = targets[:, keep]
    losses = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    index, size = target_examples(batch)
    index = index[:, keep]
    supervised = targets != IGNORE
    sums = torch.zeros(size, dtype=losses.dtype, device=losses.device).index_add(
        0, index[supervised], losses[supervised])
    counts = torch.zeros(size, dtype=torch.long, device=losses.device).scatter_add_(
        0, index[supervised], torch.ones_like(index[supervised]))
    present = counts > 0
    return sums[present], counts[present]


@dataclass(frozen=True)
class Normalization:
    units: Callable[[torch.Tensor], torch.Tensor]  # per-example counts -> this micro-batch's share of the divisor
    numerator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (per-example sums, counts) -> loss numerator


def _token_units(counts: torch.Tensor) -> torch.Tensor:
    return counts.sum()


def _token_numerator(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    return sums.sum()


def _sequence_units(counts: torch.Tensor) -> torch.Tensor:
    return torch.tensor(len(counts), device=counts.device)


def _sequence_numerator(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    return (sums / counts).sum()


# module-level functions, not lambdas: spawned DDP processes pickle the LightningModule that holds one
LOSS_NORMALIZATIONS = Registry("loss normalization")
LOSS_NORMALIZATIONS["token"] = Normalization(units=_token_units, numerator=_token_numerator)
LOSS_NORMALIZATIONS["sequence"] = Normalization(units=_sequence_units, numerator=_sequence_numerator)
