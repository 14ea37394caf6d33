"""KV-cached, continuously batched decoding: a row leaves the batch as soon as it finishes, and the next prompt
takes its place.

`model.generate` keeps decoding a static batch until its longest row ends: a batch whose answers run from 20 to
250 tokens spends most of its steps on rows that are done. Here a row that emits an EOS id leaves at once (its
KV-cache rows, attention row, position and rule-head state are dropped) and a prompt prefilled ahead takes its
place, so every step runs on `batch_size` live rows while prompts wait. Prompts are prefilled `batch_size` at a
time, once the previous ones have all joined: a prefill reads every weight however few prompts it holds, so one
prefill per freed row would cost more than it saves (benchmarks/README.md has the counts). Where attention can keep
packed sequences apart at each one's own cost (flash attention, sdpa), a prefill packs its prompts into one row, so
none of its compute goes to padding (`prefill_packed`). The prefilled
prompts' caches wait beside the batch's, at most `batch_size` rows more. Rows are left-padded to one width;
a joining row pads whichever side is narrower, and columns that have become padding in every row are cut.
Positions are each row's own (a prompt's first token is position 0), so padding never moves a row's tokens.
Joining needs a cache of plain full-attention layers (`DynamicLayer`); with any other layer (sliding window,
linear attention) the loop decodes one static batch at a time, in which finished rows still leave.

Each step follows `generate`'s order: logits of the last position in fp32, EOS blocked before `min_new_tokens`, the
rule head (product of experts), then for sampling temperature, top-k and top-p (transformers' own warpers) and
a multinomial draw; greedy takes the argmax. A row also finishes when its text reaches one of the config's stop
strings (transformers' `StopStringCriteria`). Only the given config counts: unlike `generate`, nothing is merged
in from the checkpoint's `generation_config.json` (a chat model's default sampling cannot switch on unasked)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any, Iterator, Sequence

import torch
from transformers import (DynamicCache, GenerationConfig, LogitsProcessorList, StopStringCriteria,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
from transformers.cache_utils import DynamicLayer

from rt_lab.generate.rule_head import RowRuleHead
from rt_lab.generate.rules import Rule
from rt_lab.train.segment_attention import attends_per_sequence, per_sequence


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


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of prompts left-padded to the longest: every prompt ends where generation
    starts."""
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention[row, width - len(ids):] = 1
    return input_ids.to(device), attention.to(device)


def pad_left(tensor: torch.Tensor, columns: int, dim: int, value: int = 0) -> torch.Tensor:
    if columns == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = columns
    return torch.cat([tensor.new_full(shape, value), tensor], dim=dim)


@dataclass
class Rows:
    """The rows being decoded: left-padded token ids and attention mask of one width, the KV cache of every
    column but the newest, and the logits the next token is chosen from."""

    prompt: torch.Tensor  # (B,) each row's index in the prompt list
    ids: torch.Tensor  # (B, W)
    attention: torch.Tensor  # (B, W)
    position: torch.Tensor  # (B,) position of each row's newest token
    generated: torch.Tensor  # (B,) new tokens so far
    logits: torch.Tensor  # (B, V) next-token logits
    cache: DynamicCache

    def __len__(self) -> int:
        return len(self.prompt)

    def per_row(self) -> list[str]:
        """The names of the (B, ...) tensors."""
        return [field.name for field in fields(self) if field.name != "cache"]

    def keep(self, rows: torch.Tensor) -> None:
        for name in self.per_row():
            setattr(self, name, getattr(self, name)[rows])
        self.cache.batch_select_indices(rows)

    def split(self, count: int) -> tuple[Rows, Rows | None]:
        """(the first `count` rows, the others or None); each part loses the padding columns only the other
        needed. Each part's cache holds copies of its own rows' slices only (`keep` re-indexes a layer's tensors
        rather than writing into them), so the two parts share no tensor."""
        if count >= len(self):
            return self, None
        first = copy.copy(self)
        first.cache = copy.copy(self.cache)
        first.cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        first.keep(torch.arange(count, device=self.prompt.device))
        self.keep(torch.arange(count, len(self), device=self.prompt.device))
        first.cut_common_padding()
        self.cut_common_padding()
        return first, self

    def cut_common_padding(self) -> None:
        """Drop leading columns that are padding in every row (the rows that needed them have left)."""
        padding = int((self.attention.shape[1] - self.attention.sum(dim=1)).min())
        if padding == 0:
            return
        self.ids, self.attention = self.ids[:, padding:], self.attention[:, padding:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, padding:], layer.values[:, :, padding:]

    def join(self, other: Rows, pad_id: int) -> None:
        """Append `other`'s rows, padding the narrower side on the left."""
        width = max(self.ids.shape[1], other.ids.shape[1])
        for rows in (self, other):
            grow = width - rows.ids.shape[1]
            rows.ids, rows.attention = pad_left(rows.ids, grow, 1, pad_id), pad_left(rows.attention, grow, 1)
            for layer in rows.cache.layers:
                layer.keys, layer.values = pad_left(layer.keys, grow, 2), pad_left(layer.values, grow, 2)
        for name in self.per_row():
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys, mine.values = torch.cat([mine.keys, theirs.keys]), torch.cat([mine.values, theirs.values])


def joinable(model: Any) -> bool:
    """Whether rows can join and padding columns be cut: every cache layer of the model a plain full-attention
    `DynamicLayer`."""
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


def prompt_positions(attention: torch.Tensor) -> torch.Tensor:
    """Each column's position in its left-padded row's prompt (padding columns: 0)."""
    return (attention.cumsum(-1) - 1).clamp(min=0)


def prefill_padded(model: Any, prompts: Sequence[Sequence[int]], indices: torch.Tensor, pad_id: int) -> Rows:
    """New rows for these prompts, run left-padded to the longest, holding the logits of each prompt's last
    position."""
    ids, attention = left_padded(prompts, pad_id, indices.device)
    positions = prompt_positions(attention)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions, cache=cache, use_cache=True,
                   logits_to_keep=1).logits[:, -1]
    return Rows(indices, ids, attention, positions[:, -1], torch.zeros_like(indices), logits, cache)


def prefill_packed(model: Any, prompts: Sequence[Sequence[int]], indices: torch.Tensor, pad_id: int) -> Rows:
    """`prefill_padded`'s rows, computed as one row of the padded rows' real columns, whose position ids restart
    at each prompt: no compute goes to padding, and attention stays inside each prompt at that prompt's own cost
    (`segment_attention.per_sequence`; the model's own block mask would cost the square of the whole row). The
    cache is then laid out as the left-padded rows."""
    ids, attention = left_padded(prompts, pad_id, indices.device)
    positions = prompt_positions(attention)
    real = attention.bool()
    ends = attention.sum(dim=1).cumsum(0) - 1  # each prompt's last column in the packed row
    cache = DynamicCache(config=model.config)
    with per_sequence(model):
        logits = model(input_ids=ids[real][None], position_ids=positions[real][None], cache=cache, use_cache=True,
                       logits_to_keep=ends).logits[0]
    unpack_cache(cache, ends, ids.shape[1])
    return Rows(indices, ids, attention, positions[:, -1], torch.zeros_like(indices), logits, cache)


def unpack_cache(cache: DynamicCache, ends: torch.Tensor, width: int) -> None:
    """A packed row's cache (1, heads, sum of lengths, dim) as left-padded rows (n, heads, width, dim): row i
    ends at packed column `ends[i]`. Padding columns hold whatever packed columns precede a row (another prompt's
    entries, or the row's own first one), masked out like any padding. Keys and values may differ in heads and
    dim (multi-head latent attention caches)."""
    source = (ends[:, None] - torch.arange(width - 1, -1, -1, device=ends.device)).clamp(min=0).flatten()
    for layer in cache.layers:
        layer.keys, layer.values = (
            packed[0].index_select(1, source).view(packed.shape[1], len(ends), width, packed.shape[3])
            .transpose(0, 1).contiguous()
            for packed in (layer.keys, layer.values))


class Scheduler:
    """Which rows decode: prompts are prefilled `batch_size` at a time, once the previous ones have all joined, and
    each free row takes a prefilled prompt at the next step (with a cache that cannot take joiners, one static
    batch at a time). The rule head's rows follow the batch's."""

    def __init__(self, model: Any, prompts: Sequence[Sequence[int]], batch_size: int, pad_id: int,
                 rules: Sequence[Rule], instruction_starts: Sequence[int] | None, device: torch.device) -> None:
        self.model, self.prompts, self.batch_size, self.pad_id = model, prompts, batch_size, pad_id
        self.rules, self.instruction_starts, self.device = rules, instruction_starts, device
        self.refills = joinable(model)
        self.prefill = prefill_packed if self.refills and attends_per_sequence(model) else prefill_padded
        self.rows: Rows | None = None  # the batch decoding now
        self.ready: Rows | None = None  # prefilled prompts waiting for a free row
        self.next_prompt = 0  # the first prompt not prefilled yet
        self.head: RowRuleHead | None = None

    def fill(self) -> Rows | None:
        """Phase 1: free rows take prefilled prompts (prefilling the next ones when none wait); the batch, or None
        when every prompt has finished."""
        free = self.batch_size - (len(self.rows) if self.rows is not None else 0)
        if free and (self.rows is None or self.refills):
            if self.ready is None and self.next_prompt < len(self.prompts):
                joining = range(self.next_prompt, min(len(self.prompts), self.next_prompt + self.batch_size))
                self.next_prompt = joining.stop
                self.ready = self.prefill(self.model, [self.prompts[i] for i in joining],
                                          torch.arange(joining.start, joining.stop, device=self.device), self.pad_id)
            if self.ready is not None:
                new, self.ready = self.ready.split(free)
                if self.rules:
                    self.head = self.head or RowRuleHead(self.rules, new.logits.shape[-1], self.device)
                    starts = torch.tensor([self.instruction_starts[i] for i in new.prompt.tolist()],
                                          device=self.device)
                    self.head.join(new.ids, new.position + 1, starts)
                if self.rows is None:
                    self.rows = new
                else:
                    self.rows.join(new, self.pad_id)
        return self.rows

    def retire(self, finished: torch.Tensor, token: torch.Tensor) -> torch.Tensor | None:
        """Phase 3: finished rows leave (with their rule-head rows); the tokens of the rows that go on, None when
        none does."""
        keep = (~finished).nonzero()[:, 0]
        if self.head is not None:
            self.head.keep(keep)
        if keep.numel() == 0:
            self.rows = None
            return None
        self.rows.keep(keep)
        if self.refills:
            self.rows.cut_common_padding()
        return token[keep]


@torch.inference_mode()
def decode(model: Any, prompts: Sequence[Sequence[int]], config: GenerationConfig, batch_size: int, pad_id: int,
           rules: Sequence[Rule] = (), instruction_starts: Sequence[int] | None = None,
           stop: StopStringCriteria | None = None) -> Iterator[tuple[int, list[int]]]:
    """Yields `(index, new tokens)` for every prompt as it finishes, in finishing order: its tokens up to and
    including its EOS or the token that completes a stop string, at most `config.max_new_tokens`. Prompts join in
    the given order, at most `batch_size` decoding at once. With `rules`, the rule head scores every step;
    `instruction_starts[i]` is where prompt i's instruction begins (its `since_user_tag` scope). Each step: fill
    free rows (`Scheduler.fill`), choose the next tokens, yield the finished rows, retire them
    (`Scheduler.retire`), run the model on the new tokens."""
    if rules and instruction_starts is None:
        raise ValueError("decoding with rules needs instruction_starts: where each prompt's instruction begins")
    device = next(model.parameters()).device
    eos = torch.tensor(eos_ids(config), device=device)
    warpers = sampling_warpers(config) if config.do_sample else None
    min_new_tokens, max_new_tokens = config.min_new_tokens or 0, config.max_new_tokens
    new_tokens = torch.zeros((len(prompts), max_new_tokens), dtype=torch.long, device=device)
    scheduler = Scheduler(model, prompts, batch_size, pad_id, rules, instruction_starts, device)
    while (rows := scheduler.fill()) is not None:
        # choose: generate's order (EOS blocked before min_new_tokens, the rule head, then sampling or greedy)
        scores = rows.logits.float()
        if min_new_tokens:
            early = (rows.generated < min_new_tokens)[:, None]
            scores[:, eos] = torch.where(early, float("-inf"), scores[:, eos])
        if scheduler.head is not None:
            scores = scheduler.head(scores, rows.position)
        if warpers is not None:
            token = torch.multinomial(torch.softmax(warpers(rows.ids, scores), dim=-1), 1)[:, 0]
        else:
            token = scores.argmax(dim=-1)
        new_tokens[rows.prompt, rows.generated] = token
        rows.generated += 1
        rows.position += 1
        rows.ids = torch.cat([rows.ids, token[:, None]], dim=1)
        rows.attention = torch.cat([rows.attention, rows.attention.new_ones((len(rows), 1))], dim=1)
        if scheduler.head is not None:
            scheduler.head.record(token, rows.position)
        finished = torch.isin(token, eos) | (rows.generated == max_new_tokens)
        if stop is not None:  # the row's text now ends in a stop string
            finished |= stop(rows.ids, None)
        if finished.any():
            done = finished.nonzero()[:, 0]
            for index, length in zip(rows.prompt[done].tolist(), rows.generated[done].tolist()):
                yield index, new_tokens[index, :length].tolist()
            token = scheduler.retire(finished, token)
            if token is None:
                continue
        rows.logits = model(input_ids=token[:, None], attention_mask=rows.attention,
                            position_ids=rows.position[:, None], cache=rows.cache, use_cache=True).logits[:, -1]
