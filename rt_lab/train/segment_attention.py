"""Attention of packed rows, one causal sdpa call per sequence: the variable-length attention that flash
attention's kernels give GPUs, for sdpa models (CPUs, GPUs without flash-attn).

A packed row (rt_lab.data.packing) carries its sequence boundaries in its position ids, which restart at 0. With
`sdpa` transformers turns them into a block-causal mask over the whole row, so attention costs the square of the
row's length however short its sequences are. `sdpa_segments` cuts the row at the restarts instead and runs each
sequence alone with `is_causal`: the same result, at the cost of the sum of the squares. Anything else (a padding
mask, a KV cache, several rows) goes to transformers' sdpa unchanged. Training switches an sdpa model to it while
packing (`use_for_packing`) and back when done (`restore`); decoding prefills packed prompts inside
`per_sequence`."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_segments"


def segment_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                 attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """No mask where the attention cuts the row by its position ids (no padding, no cache); sdpa's otherwise."""
    if attention_mask is None and q_length == kv_length and q_offset == 0 and kv_offset == 0:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, **kwargs)


def segment_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    position_ids = kwargs.get("position_ids")
    length = query.shape[2]
    if attention_mask is not None or position_ids is None or query.shape[0] != 1 or key.shape[2] != length:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    restarts = (position_ids[0, 1:] == 0).nonzero()[:, 0].add(1).tolist()
    bounds = [0, *restarts, length]
    parts = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                    None, **kwargs)[0] for start, end in zip(bounds, bounds[1:])]
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)), None  # (1, L, heads, head_dim)


AttentionInterface.register(NAME, segment_attention)
AttentionMaskInterface.register(NAME, segment_mask)


def uses_flash_attention(model: Any) -> bool:
    """flash_attention_2/3/4 or a hub kernel of it: varlen kernels that read sequence boundaries from the position
    ids (packed rows) or from a padding mask."""
    return "flash" in str(model.config._attn_implementation)


def attends_per_sequence(model: Any) -> bool:
    """Whether a packed row of `model` can attend inside each sequence at that sequence's own cost, with no mask:
    flash attention's varlen kernels, or sdpa through `sdpa_segments` (`per_sequence`)."""
    return uses_flash_attention(model) or model.config._attn_implementation in ("sdpa", NAME)


@contextmanager
def per_sequence(model: Any) -> Iterator[None]:
    """Inside this block an sdpa model attends through `sdpa_segments`; any other implementation stays as it is,
    and the model leaves the block as it entered it."""
    switch = model.config._attn_implementation == "sdpa"
    if switch:
        model.set_attn_implementation(NAME)
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation("sdpa")


def use_for_packing(model: Any) -> None:
    """Packed training of an sdpa model attends per sequence; other implementations already do so (flash
    attention's varlen kernels, flex attention's block mask) or are left as chosen (eager)."""
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(NAME)


def restore(model: Any) -> None:
    """Back to sdpa after training, as the model was loaded and as a saved copy will load."""
    if model.config._attn_implementation == NAME:
        model.set_attn_implementation("sdpa")
