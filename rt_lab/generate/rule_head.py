"""The rule head: the rules' scores multiplied into a model as a product of experts (Hewitt et al. §6).

Each step the head returns `log_softmax(base logits) + log_softmax(r)`, `r` the weighted sum of the enabled rules'
scores (rt_lab.generate.rules), which greedy decoding argmaxes and sampling renormalises. Its per-sequence state
(`RuleState`) is kept per slot and grows by each step's new tokens: `RowRuleHead` runs it in rt_lab's decoding
loop, `RuleHead` in transformers' `generate`, rt_lab.generate.rule_slots inside vLLM.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import LogitsProcessor

from rt_lab.generate.rules import Rule, Step


class RuleState:
    """Per-slot decoding state of the rule head, for a batch whose rows (slots) are reused by one request after
    another: where each slot's scopes start, and, when a rule reads history, each token's latest position since
    the instruction, updated with only the tokens each step adds. Positions count from a slot's first token
    (left padding included, for transformers' batches)."""

    def __init__(self, slots: int, vocab_size: int, device: torch.device | str, tracks_history: bool) -> None:
        self.vocab_size = vocab_size
        self.instruction_start = torch.zeros(slots, dtype=torch.long, device=device)
        self.response_start = torch.zeros(slots, dtype=torch.long, device=device)
        # tokens before the instruction (padding, BOS, the user tag) land in a spare last column that no score reads
        self.last_seen = (torch.full((slots, vocab_size + 1), -1, dtype=torch.int32, device=device)
                          if tracks_history else None)

    def start(self, slots: torch.Tensor, instruction_start: torch.Tensor, response_start: torch.Tensor) -> None:
        """Hand `slots` to new requests: whatever earlier requests left there is forgotten."""
        self.instruction_start[slots] = instruction_start.to(self.instruction_start.device)
        self.response_start[slots] = response_start.to(self.response_start.device)
        if self.last_seen is not None:
            self.last_seen[slots] = -1

    def record(self, slots: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor,
               valid: torch.Tensor | None = None) -> None:
        """Note `tokens` (B, K) at `positions` (B, K) of their slots' sequences; entries where `valid` is False
        are ignored."""
        if self.last_seen is None:
            return
        keep = positions >= self.instruction_start[slots][:, None]
        if valid is not None:
            keep &= valid
        columns = torch.where(keep, tokens.long(), self.vocab_size)
        flat = slots.long()[:, None] * self.last_seen.shape[1] + columns
        self.last_seen.view(-1).scatter_reduce_(0, flat.flatten(), positions.flatten().to(self.last_seen.dtype),
                                                "amax")

    def grow(self, count: int) -> torch.Tensor:
        """Add `count` slots at the end (to be `start`ed); their indices."""
        first = len(self.response_start)
        self.instruction_start = torch.cat([self.instruction_start, self.instruction_start.new_zeros(count)])
        self.response_start = torch.cat([self.response_start, self.response_start.new_zeros(count)])
        if self.last_seen is not None:
            self.last_seen = torch.cat([self.last_seen, self.last_seen.new_full((count, self.vocab_size + 1), -1)])
        return torch.arange(first, first + count, device=self.response_start.device)

    def copy_slots(self, sources: torch.Tensor, targets: torch.Tensor) -> None:
        """Slot `targets[i]` takes slot `sources[i]`'s state, all read before any is written (so a pair of slots
        can swap)."""
        self.instruction_start[targets] = self.instruction_start[sources]
        self.response_start[targets] = self.response_start[sources]
        if self.last_seen is not None:
            self.last_seen[targets] = self.last_seen[sources]

    def keep(self, slots: torch.Tensor) -> None:
        """Keep only these slots, renumbered 0.. in this order (a batch whose finished rows leave)."""
        self.instruction_start = self.instruction_start[slots]
        self.response_start = self.response_start[slots]
        if self.last_seen is not None:
            self.last_seen = self.last_seen[slots]

    def step(self, slots: torch.Tensor | None, positions: torch.Tensor) -> Step:
        """What the rules see for rows whose sequences' last token sits at `positions` (B,); row i is slot
        `slots[i]`, or slot i when `slots` is None (no per-step gather of the position table)."""
        every = slice(None) if slots is None else slots
        scope_starts = {"since_user_tag": self.instruction_start[every], "response": self.response_start[every]}
        last_seen = None if self.last_seen is None else self.last_seen[every, : self.vocab_size]
        return Step(positions + 1 - scope_starts["response"], last_seen, scope_starts)


def rule_scores(rules: Sequence[Rule], step: Step, vocab_size: int) -> torch.Tensor:
    """(B, V) `r`: the weighted sum of the rules' scores."""
    r = torch.zeros(len(step.generated), vocab_size, device=step.generated.device)
    for rule in rules:
        rule.add_to(r, step)
    return r


def product_of_experts(logits: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).add_(torch.log_softmax(r, dim=-1))


class RuleHead(LogitsProcessor):
    """Product of experts as a logits processor of transformers' `generate` over one static, left-padded batch:
    row b is slot b of a `RuleState`. `response_start[b]` is where row b's response begins in the padded input
    (t counts from there, and the `response` scope starts there); `instruction_start[b]` is where its instruction
    begins (the `since_user_tag` scope). Both stay right for ragged, left-padded batches."""

    def __init__(self, rules: Sequence[Rule], response_start: torch.Tensor, instruction_start: torch.Tensor) -> None:
        self.rules = list(rules)
        self.response_start = response_start
        self.instruction_start = instruction_start
        self.state: RuleState | None = None
        self.seen = 0

    def rule_scores(self, input_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
        batch, length = input_ids.shape
        rows = torch.arange(batch, device=input_ids.device)
        if self.state is None:
            self.state = RuleState(batch, vocab_size, input_ids.device,
                                   any(rule.reads_history for rule in self.rules))
            self.state.start(rows, self.instruction_start, self.response_start)
        self.state.record(rows, input_ids[:, self.seen:],
                          torch.arange(self.seen, length, device=input_ids.device).expand(batch, -1))
        self.seen = length
        step = self.state.step(None, torch.full((batch,), length - 1, device=input_ids.device))
        return rule_scores(self.rules, step, vocab_size)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return product_of_experts(scores, self.rule_scores(input_ids, scores.shape[-1]))


class RowRuleHead:
    """Product of experts over the rows of rt_lab's decoding loop (rt_lab.generate.loop): row i is slot i of a
    `RuleState`; rows join with their prompts and leave when they finish. Positions are each row's own (its
    prompt's first token is 0), so the padding the loop adds or cuts never moves them."""

    def __init__(self, rules: Sequence[Rule], vocab_size: int, device: torch.device | str) -> None:
        self.rules = list(rules)
        self.state = RuleState(0, vocab_size, device, any(rule.reads_history for rule in self.rules))

    def join(self, ids: torch.Tensor, lengths: torch.Tensor, instruction_start: torch.Tensor) -> None:
        """New rows at the end: their left-padded prompts `ids` (n, W), of `lengths` tokens, whose instructions
        begin at `instruction_start`; each response begins where its prompt ends."""
        slots = self.state.grow(len(ids))
        self.state.start(slots, instruction_start, lengths)
        positions = torch.arange(ids.shape[1], device=ids.device) - (ids.shape[1] - lengths)[:, None]
        self.state.record(slots, ids, positions, positions >= 0)

    def keep(self, rows: torch.Tensor) -> None:
        self.state.keep(rows)

    def record(self, tokens: torch.Tensor, positions: torch.Tensor) -> None:
        """Each row's newest token (B,) at its position (B,)."""
        self.state.record(torch.arange(len(tokens), device=tokens.device), tokens[:, None], positions[:, None])

    def __call__(self, scores: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """`scores` (B, V) of the next token of rows whose newest token sits at `positions` (B,)."""
        return product_of_experts(scores, rule_scores(self.rules, self.state.step(None, positions),
                                                      scores.shape[-1]))
