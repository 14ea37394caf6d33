"""KV-cached decoding of one left-padded batch in which a row leaves as soon as it finishes.

`model.generate` keeps decoding a static batch until its longest row ends: a batch whose answers run from 20 to
250 tokens spends most of its steps on rows that are done. Here a row that emits an EOS id leaves at once: its
KV-cache rows (`Cache.batch_select_indices`), attention row, position and rule-head state are dropped, and the
next forward runs on the rows still decoding.

Each step follows `generate`'s order: logits of the last position in fp32, EOS blocked before `min_new_tokens`, the
rule head (product of experts), then for sampling temperature, top-k and top-p (transformers' own warpers) and
a multinomial draw; greedy takes the argmax. A row also finishes when its text reaches one of the config's stop
strings (transformers' `StopStringCriteria`). Only the given config counts: unlike `generate`, nothing is merged
in from the checkpoint's `generation_config.json` (a chat model's default sampling cannot switch on unasked)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (DynamicCache, GenerationConfig, LogitsProcessorList, StopStringCriteria,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from rt_lab.generate.rule_head import RuleHead


def eos_ids(config: GenerationConfig) -> list[int]:
    ids = config.eos_token_id
    if ids is None:
        raise ValueError("generation config has no eos_token_id: decoding would never stop before max_new_tokens")
    return [ids] if isinstance(ids, int) else list(ids)


def sampling_warpers(config: GenerationConfig) -> LogitsProcessorList:
    """The warpers `generate` applies when sampling, in its order and with its conditions."""
    warpers = LogitsProcessorList()
    if config.temperature is not None and config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k is not None and config.top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=config.top_p))
    return warpers


@torch.inference_mode()
def decode(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, config: GenerationConfig,
           head: RuleHead | None = None, stop: StopStringCriteria | None = None) -> list[list[int]]:
    """The new tokens of every row of a left-padded batch, each up to and including its EOS or the token that
    completes a stop string (at most `config.max_new_tokens`)."""
    device = input_ids.device
    eos = torch.tensor(eos_ids(config), device=device)
    warpers = sampling_warpers(config) if config.do_sample else None
    min_new_tokens = config.min_new_tokens or 0
    batch = input_ids.shape[0]
    new_tokens = torch.zeros((batch, config.max_new_tokens), dtype=torch.long, device=device)
    lengths = torch.full((batch,), config.max_new_tokens, dtype=torch.long, device=device)
    live = torch.arange(batch, device=device)  # each live row's index in the batch
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: every prompt starts at position 0
    cache = DynamicCache(config=model.config)
    ids = input_ids
    logits = model(input_ids=ids, attention_mask=attention_mask, position_ids=positions, cache=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    for step in range(config.max_new_tokens):
        scores = logits.float()
        if step < min_new_tokens:
            scores[:, eos] = float("-inf")
        if head is not None:
            scores = head(ids, scores)
        if warpers is not None:
            token = torch.multinomial(torch.softmax(warpers(ids, scores), dim=-1), 1)[:, 0]
        else:
            token = scores.argmax(dim=-1)
        new_tokens[live, step] = token
        if step + 1 == config.max_new_tokens:
            break
        ids = torch.cat([ids, token[:, None]], dim=1)
        finished = torch.isin(token, eos)
        if stop is not None:  # the row's text now ends in a stop string
            finished |= stop(ids, None)
        if finished.any():
            lengths[live[finished]] = step + 1
            keep = (~finished).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            live, token, ids, attention_mask, positions = (t[keep] for t in (live, token, ids, attention_mask,
                                                                             positions))
            cache.batch_select_indices(keep)
            if head is not None:
                head.select_rows(keep)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(live), 1))], dim=1)
        positions = positions[:, -1:] + 1
        logits = model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=positions,
                       cache=cache, use_cache=True).logits[:, -1]
    return [row[:length] for row, length in zip(new_tokens.tolist(), lengths.tolist())]  # one copy to the host
