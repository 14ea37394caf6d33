"""Which precision the weights train in: fp32 master weights unless a user explicitly opts out.

Hub models load in `model.dtype` (bf16). An optimizer step on bf16 weights rounds every update smaller than half
a bf16 ulp away: at lr 1e-5 that is almost all of them (the original full fine-tunes ran under DeepSpeed ZeRO-3,
which keeps fp32 master weights). So every trainable parameter is made fp32 before training and `*-mixed`
precision autocasts the compute to bf16; after training a full fine-tune is cast back to `model.dtype`, the dtype
the authors saved and evaluated. Frozen weights (an adapter's base) stay as loaded.

`trainer.lightning.precision=bf16-true` (Lightning casts every weight to bf16) needs
`trainer.allow_low_precision_weights=true` and logs a warning."""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

# Lightning precisions that store the weights themselves in 16 bits (its aliases "bf16" and "16" are mixed)
LOW_PRECISION_WEIGHTS = ("bf16-true", "16-true")


def warn_low_precision(precision: str) -> None:
    """16-bit weights train only when opted in (trainer.allow_low_precision_weights, checked by the schema:
    rt_lab/config/trainer.py); say what that costs."""
    if str(precision) in LOW_PRECISION_WEIGHTS:
        log.warning("trainer.lightning.precision=%s: weights and optimizer updates in 16 bits; updates below half a "
                    "ulp are lost (trainer.allow_low_precision_weights=true)", precision)


def keep_master_weights_fp32(model: Any) -> None:
    """Make every trainable floating-point parameter fp32 (in place)."""
    converted = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.is_floating_point() and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
            converted += 1
    if converted:
        log.info("%d trainable tensors upcast to fp32 master weights", converted)


def cast_full_fine_tune(model: Any, dtype_name: str) -> Any:
    """A model whose every weight trained goes back to the configured `model.dtype` for export and generation;
    adapters keep their fp32 weights (merging casts them)."""
    if all(parameter.requires_grad for parameter in model.parameters()):
        model.to(getattr(torch, dtype_name))
    return model
