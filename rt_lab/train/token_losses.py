"""The cross-entropy of every supervised next-token target, without a full-vocabulary logits tensor.

The fused path runs the model's decoder, gathers the last hidden states at supervised positions and computes the
LM head and the cross-entropy together, chunk by chunk (`torch.nn.functional.linear_cross_entropy`): no
(positions x vocabulary) logits tensor, fp32 or otherwise, exists at once, in the forward or the backward. For
Llama-3.1 (vocabulary 128k) at 2,048 tokens x micro-batch 8 that is ~8.6 GB of fp32 logits (and as much again in
gradients) never allocated.

It holds only where logits = lm_head(last hidden state). `fused_head` checks that for the model at hand: a head
wrapped by an adapter, a soft-capping config (Gemma-2) or a probe forward whose logits differ from
lm_head(hidden) (Cohere's `logit_scale`, Granite's `logits_scaling`, MiniCPM's width scaling, any other) send
the model to the reference path, the model's own logits at supervised positions.

Precision: under autocast the head runs in the autocast dtype with fp32 accumulation, as the reference's bf16
`lm_head` then fp32 softmax does; the op returns per-token losses in that dtype, so under bf16-mixed each token's
loss (and its gradient weight) is rounded to bf16 (relative 2^-8) where the reference keeps fp32."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rt_lab.data.masking import IGNORE
from rt_lab.train.segment_attention import uses_flash_attention

log = logging.getLogger(__name__)

SOFT_CAPPING_KEYS = ("final_logit_softcapping",)  # a probe cannot see a cap on small logits
PROBE_TOKENS = 16
PROBE_TOLERANCE = 1e-4  # relative to the largest logit: the two paths run the same kernels in eval mode
# On a CPU a chunk holds this many bytes of fp32 logits. torch's own chunking sizes a chunk's logits like its input,
# which for an LM head (vocabulary >> hidden size) means matmuls of a few rows, many times slower than larger chunks
# on a CPU (measured: benchmarks/README.md). CUDA keeps torch's pick.
CPU_CHUNK_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class FusedHead:
    decoder: nn.Module  # input ids -> last hidden states (after the final norm)
    head: nn.Linear


def fused_head(model: Any) -> FusedHead | None:
    """The decoder and the plain linear LM head whose product is `model`'s logits, or None (reference path)."""
    config = getattr(model, "config", None)
    capped = [key for key in SOFT_CAPPING_KEYS if getattr(config, key, None)]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if capped or type(head) is not nn.Linear or decoder is None:
        log.info("loss: reference path (full logits at supervised positions): %s",
                 f"soft-capped logits ({capped[0]})" if capped else f"LM head is {type(head).__name__}")
        return None
    fused = FusedHead(decoder, head)
    difference = _probe_difference(model, fused)
    if difference > PROBE_TOLERANCE:
        log.info("loss: reference path: the model's logits are not lm_head(hidden) (relative difference %.2g)",
                 difference)
        return None
    return fused


@torch.no_grad()
def _probe_difference(model: Any, fused: FusedHead) -> float:
    """Max |model logits - lm_head(decoder hidden)| / max |model logits| on a few tokens, in eval mode (no
    dropout) and without autocast (both paths in the weights' own dtype)."""
    weight = fused.head.weight
    ids = (torch.arange(PROBE_TOKENS, device=weight.device) * 7 % weight.shape[0])[None]
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(weight.device.type, enabled=False):
            logits = model(input_ids=ids, use_cache=False).logits.float()
            hidden = fused.decoder(input_ids=ids, use_cache=False).last_hidden_state
            mine = F.linear(hidden.to(weight.dtype), weight, fused.head.bias).float()
    finally:
        model.train(was_training)
    return ((logits - mine).abs().max() / logits.abs().max().clamp_min(1e-6)).item()


def supervised_token_losses(model: Any, batch: dict[str, torch.Tensor], head: FusedHead | None,
                            keep: torch.Tensor) -> torch.Tensor:
    """fp32 cross-entropies of the supervised targets of labels[:, 1:], row-major (row by row, left to right).

    `keep`, on the reference path: the target columns with any supervised label, the only positions whose logits
    the model computes."""
    inputs = model_inputs(model, batch)
    targets = batch["labels"][:, 1:]
    if head is None:
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
        kept = targets[:, keep]
        losses = F.cross_entropy(logits.float().transpose(1, 2), kept, ignore_index=IGNORE, reduction="none")
        return losses[kept != IGNORE]
    hidden = head.decoder(**inputs, use_cache=False).last_hidden_state[:, :-1]
    supervised = targets != IGNORE
    return chunked_cross_entropy(hidden[supervised], head.head, targets[supervised])


def model_inputs(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The forward's inputs for right-padded (rt_lab.data.datamodule.collate_padded, the only padding the loss is
    given) or packed rows. The padding mask goes only to flash attention, whose varlen kernels use it to skip the
    pads. Elsewhere causal attention already keeps every trailing pad out of the real tokens before it, and without a
    mask sdpa runs its causal kernels (faster, with less memory and the same loss: benchmarks/README.md)."""
    inputs = {key: batch[key] for key in ("input_ids", "position_ids") if key in batch}
    if "attention_mask" in batch and uses_flash_attention(model):
        inputs["attention_mask"] = batch["attention_mask"]
    return inputs


def chunked_cross_entropy(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """fp32 per-target cross-entropies of `head(hidden)`, (N, H) -> (N,), in vocabulary chunks."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else head.weight.dtype
    low_precision = dtype in (torch.bfloat16, torch.float16)
    acc_dtype = torch.float32 if low_precision else None
    if device == "cpu":  # only "accurate" keeps the weight-gradient matmul in fp32 instead of an emulated 16-bit one
        options = torch.nn.LinearCrossEntropyOptions(
            acc_policy="accurate", acc_dtype=acc_dtype, chunking_method=None,
            batch_chunk_size=max(1, CPU_CHUNK_BYTES // (4 * head.out_features)))
    else:
        options = torch.nn.LinearCrossEntropyOptions(acc_dtype=acc_dtype)
    bias = head.bias.to(dtype) if head.bias is not None else None
    with torch.autocast(device, enabled=False):
        losses = F.linear_cross_entropy(hidden.to(dtype), head.weight.to(dtype), targets, linear_bias=bias,
                                        reduction="none", options=options)
    return losses.float()
