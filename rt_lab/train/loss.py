"""The training loss of one optimizer step, and how it is normalised.

Every micro-batch yields per-example sums of next-token cross-entropies and supervised-token counts (an example is
a row of a padded micro-batch or a segment of a packed one). A normalisation turns them into a numerator per
micro-batch and a number of units for the whole step, so the step's loss is (sum of numerators) / (units over the
window and every rank): the micro-batch split, packing and device count never change it.

- `token`: sum of token losses / supervised tokens of the step (every token weighs the same; TRL's default).
- `sequence`: mean over the step's examples of each example's mean token loss (every example weighs the same;
  open-instruct's `reduce_loss=mean` with one row per device, Hewitt et al.'s setting).
- `micro_batch`: mean over the step's micro-batches (on every rank) of each micro-batch's token mean: the Hugging
  Face Trainer before transformers 4.46 (each micro-batch's mean-reduced loss divided by the accumulation steps,
  averaged over ranks by DDP), which An et al.'s TRL `SFTTrainer` ran on. Unlike the others it depends on the
  micro-batch split, as theirs did; a micro-batch without a supervised token adds 0 (theirs: NaN).

Add one with `LOSS_NORMALIZATIONS["name"] = Normalization(units=..., numerator=...)` (module-level functions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from rt_lab.data.collate import Batch
from rt_lab.data.masking import IGNORE
from rt_lab.registry import Registry
from rt_lab.train.token_losses import FusedHead, supervised_token_losses



def target_examples(batch: Batch) -> torch.Tensor:
    """For every next-token target (labels[:, 1:]) a number for the example it belongs to, increasing in
    micro-batch order. Packed rows start a new example wherever position ids restart."""
    labels = batch["labels"]
    if "position_ids" in batch:
        segment = (batch["position_ids"] == 0).long().cumsum(dim=-1) - 1
    else:
        segment = torch.zeros_like(labels)
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None]
    return (segment + rows * labels.shape[1])[:, 1:]  # a row holds at most as many examples as tokens


@dataclass(frozen=True)
class SupervisedTargets:
    """Where a micro-batch's loss falls, known before its forward pass."""

    keep: torch.Tensor  # the target columns with any supervised label (the only logits computed)
    example: torch.Tensor  # for each supervised target of labels[:, 1:][:, keep], in order: its example's index
    counts: torch.Tensor  # supervised targets of each example that has any, in micro-batch order


def supervised_targets(batch: Batch) -> SupervisedTargets:
    targets = batch["labels"][:, 1:]
    keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)
    numbers = target_examples(batch)[:, keep][targets[:, keep] != IGNORE]
    # numbers never decrease (row-major order), so runs of equal numbers are the examples
    _, example, counts = torch.unique_consecutive(numbers, return_inverse=True, return_counts=True)
    return SupervisedTargets(keep, example, counts)


def example_loss_sums(model: Any, batch: Batch, where: SupervisedTargets, head: FusedHead | None) -> torch.Tensor:
    """The sum of next-token cross-entropies of each example in `where.counts`, in the same order. Only
    supervised positions reach the vocabulary projection (rt_lab/train/token_losses.py: fused and chunked with
    `head`, else the model's logits at `where.keep`)."""
    losses = supervised_token_losses(model, batch, head, where.keep)
    return torch.zeros(len(where.counts), dtype=losses.dtype, device=losses.device).index_add(
        0, where.example, losses)


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


def _micro_batch_units(counts: torch.Tensor) -> torch.Tensor:
    return torch.tensor(1, device=counts.device)


def _micro_batch_numerator(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    return sums.sum() / counts.sum().clamp(min=1)


# module-level functions, not lambdas: spawned DDP processes pickle the LightningModule that holds one
LOSS_NORMALIZATIONS = Registry("loss normalization")
LOSS_NORMALIZATIONS["token"] = Normalization(units=_token_units, numerator=_token_numerator)
LOSS_NORMALIZATIONS["sequence"] = Normalization(units=_sequence_units, numerator=_sequence_numerator)
LOSS_NORMALIZATIONS["micro_batch"] = Normalization(units=_micro_batch_units, numerator=_micro_batch_numerator)
