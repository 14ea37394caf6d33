"""The rule-based head of Hewitt et al. §6, multiplied into a model as a product of experts.

Each step, rules score every vocabulary token (`r`, starting at 0); the head returns
`log_softmax(base logits) + log_softmax(r)`, which greedy decoding argmaxes and sampling renormalises.
Rules are tokenizer-agnostic: tables name token *strings*, resolved through the model's tokenizer. Add a rule
with `@register_rule("name")` on a class taking `(tokenizer, **its config)` with a `scores` method.
The head's per-sequence state (`RuleState`) is kept per slot and grows by each step's new tokens: `RuleHead` runs it
inside transformers' `generate`, rt_lab.generate.rule_slots inside vLLM.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import torch
from transformers import LogitsProcessor

from rt_lab.registry import Registry

log = logging.getLogger(__name__)

BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
RULES = Registry("rule")
register_rule = RULES.register


@dataclass
class Step:
    """What rules see at one decoding step, one row per sequence being decoded."""

    generated: torch.Tensor  # (B,): tokens generated so far after the prompt (`t` in the paper)
    last_seen: torch.Tensor | None  # (B, V): each token's latest position since the instruction (-1: none);
    #                                  None when no enabled rule reads history
    scope_starts: dict[str, torch.Tensor]  # scope name -> (B,) its first position in the sequence

    def present(self, scope: str) -> torch.Tensor:
        """(B, V) bool: the tokens that occur in `scope` so far. A token's latest occurrence lies inside a scope
        that runs to the end of the sequence iff any occurrence does, so one position table serves every scope."""
        if self.last_seen is None:
            raise RuntimeError("a rule read Step.present without `reads_history = True` on its class")
        return self.last_seen >= self.scope_starts[scope].to(self.last_seen.device)[:, None]


class Rule:
    weight: float = 1.0
    # whether `scores` reads `Step.present`: the head keeps its per-token position table only for such rules
    reads_history: bool = False

    def scores(self, step: Step, vocab_size: int) -> torch.Tensor:  # (B, V) additive contribution
        raise NotImplementedError

    def add_to(self, r: torch.Tensor, step: Step) -> None:
        """r += weight * scores, in place. The built-in rules override it to touch only what they change: the
        head runs once per decoding step, where a (B, V) temporary per rule costs as much as the rule."""
        r.add_(self.scores(step, r.shape[-1]), alpha=self.weight)


@lru_cache(maxsize=8)
def _surfaces(tokenizer: Any) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """Each token id's text as it reads after other text (leading spaces kept), and whether it is a
    byte-fallback piece such as `<0x0A>`."""
    anchor = tokenizer.encode("a", add_special_tokens=False)[:1]
    prefix = tokenizer.decode(anchor, clean_up_tokenization_spaces=False)
    size = len(tokenizer)
    pairs = tokenizer.batch_decode([anchor + [i] for i in range(size)], clean_up_tokenization_spaces=False)
    surfaces = tuple(text[len(prefix):] if text.startswith(prefix) else text for text in pairs)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    return surfaces, tuple(bool(piece and BYTE_FALLBACK.match(piece)) for piece in pieces)


def resolve_token_strings(tokenizer: Any, strings: Sequence[str]) -> dict[str, list[int]]:
    """Token ids whose text is exactly each string (e.g. " I" -> Llama-2's `▁I` 306). Byte-fallback pieces count
    only when no ordinary token has that text (newline -> `<0x0A>` 13 on Llama-2). Special tokens never match."""
    surfaces, is_byte = _surfaces(tokenizer)
    special = set(tokenizer.all_special_ids)
    by_text: dict[str, list[int]] = {}
    for token_id, text in enumerate(surfaces):
        if token_id not in special:
            by_text.setdefault(text, []).append(token_id)
    resolved = {}
    for string in strings:
        ids = by_text.get(string, [])
        ordinary = [i for i in ids if not is_byte[i]]
        resolved[string] = ordinary or ids
    return resolved


@register_rule("eos_ramp")
class EosRamp(Rule):
    """`r[eos] += min(cap, slope * t / horizon)` for 0 < t < horizon; nothing at t = 0 or t >= horizon."""

    def __init__(self, tokenizer: Any, weight: float = 1.0, slope: float = 15.0, horizon: int = 250,
                 cap: float | None = None) -> None:
        self.weight, self.slope, self.horizon = weight, slope, horizon
        self.cap = slope if cap is None else cap
        self.eos = tokenizer.eos_token_id

    def ramp(self, step: Step) -> torch.Tensor:
        t = step.generated.float()
        return torch.where((t > 0) & (t < self.horizon), (self.slope * t / self.horizon).clamp(max=self.cap),
                           torch.zeros_like(t))

    def scores(self, step: Step, vocab_size: int) -> torch.Tensor:
        r = torch.zeros(len(step.generated), vocab_size, device=step.generated.device)
        r[:, self.eos] = self.ramp(step)
        return r

    def add_to(self, r: torch.Tensor, step: Step) -> None:
        r[:, self.eos] += self.weight * self.ramp(step)


@register_rule("uniform")
class Uniform(Rule):
    """A fixed score change per token string, every step (the paper's table: discourage `I`, `<`, `|`,
    `should`...; encourage list and header starts, newlines, `!`)."""

    def __init__(self, tokenizer: Any, table: Sequence[Any], weight: float = 1.0) -> None:
        self.weight = weight
        resolved = resolve_token_strings(tokenizer, [entry["token"] for entry in table])
        missing = [text for text, ids in resolved.items() if not ids]
        if missing:
            log.warning("uniform rule: no token of %s is exactly %s; those entries do nothing",
                        tokenizer.name_or_path, missing)
        self.changes = [(resolved[entry["token"]], float(entry["delta"])) for entry in table]
        self._vector: torch.Tensor | None = None

    def vector(self, vocab_size: int, device: torch.device) -> torch.Tensor:
        if self._vector is None or self._vector.shape[0] != vocab_size or self._vector.device != device:
            vector = torch.zeros(vocab_size, device=device)
            for ids, delta in self.changes:
                vector[ids] += delta
            self._vector = vector
        return self._vector

    def scores(self, step: Step, vocab_size: int) -> torch.Tensor:
        return self.vector(vocab_size, step.generated.device).expand(len(step.generated), -1)

    def add_to(self, r: torch.Tensor, step: Step) -> None:
        r.add_(self.vector(r.shape[-1], r.device), alpha=self.weight)


@register_rule("diversity")
class Diversity(Rule):
    """`-penalty` once for every distinct token already in scope (`since_user_tag`: instruction, tags and
    response, as the authors' code; `response`: the response so far, as the paper's text)."""

    reads_history = True
    SCOPES = ("since_user_tag", "response")

    def __init__(self, tokenizer: Any, weight: float = 1.0, penalty: float = 1.5,
                 scope: str = "since_user_tag") -> None:
        if scope not in self.SCOPES:
            raise ValueError(f"rules.diversity.scope={scope!r}; expected one of {self.SCOPES}")
        self.weight, self.penalty, self.scope = weight, penalty, scope

    def scores(self, step: Step, vocab_size: int) -> torch.Tensor:
        return -self.penalty * step.present(self.scope).float()

    def add_to(self, r: torch.Tensor, step: Step) -> None:
        r.sub_(step.present(self.scope).to(r.dtype), alpha=self.weight * self.penalty)


@register_rule("start")
class Start(Rule):
    """The authors' optional first-tokens rule (off in the paper): at t = 0, `scale` times a score per token
    (exactly `I` -3, `Okay` +10, starting with a letter +1, with punctuation -1; one leading space ignored);
    at t = 1 `!` gets `exclaim`; at t = 2 a newline gets `newline`."""

    PUNCTUATION = set(".,:;!?<>[]{}()\"'`~@#$%^&*-=+\\|/")

    def __init__(self, tokenizer: Any, weight: float = 1.0, scale: float = 5.0, exclaim: float = 15.0,
                 newline: float = -10.0) -> None:
        self.weight, self.scale = weight, scale
        surfaces, _ = _surfaces(tokenizer)
        self.first = torch.tensor([self.first_token_score(text) for text in surfaces])
        resolved = resolve_token_strings(tokenizer, ["!", "\n"])
        self.at_step = {1: (resolved["!"], exclaim), 2: (resolved["\n"], newline)}

    def first_token_score(self, text: str) -> float:
        word = text[1:] if text.startswith(" ") else text
        if word == "I":
            return -3.0
        if word.startswith("Okay"):
            return 10.0
        if word[:1].isalpha():
            return 1.0
        if word[:1] in self.PUNCTUATION:
            return -1.0
        return 0.0

    def scores(self, step: Step, vocab_size: int) -> torch.Tensor:
        r = torch.zeros(len(step.generated), vocab_size, device=step.generated.device)
        first = self.first[:vocab_size].to(r.device)
        r[step.generated == 0, : len(first)] += self.scale * first
        for t, (ids, delta) in self.at_step.items():
            rows = step.generated == t
            if ids and rows.any():
                r[rows.nonzero(as_tuple=True)[0][:, None], torch.tensor(ids, device=r.device)] += delta
        return r


def build_rules(cfg: Any, tokenizer: Any) -> list[Rule]:
    """The enabled rules of a `rules` config, in the order given."""
    return [RULES.lookup(name, "rules.enabled item")(tokenizer, **dict(cfg.get(name) or {}))
            for name in cfg.enabled]


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
    """Product of experts over one left-padded batch, in rt_lab's decoding loop or transformers' `generate`: row b
    starts as slot b of a `RuleState`. `response_start[b]` is where row b's response begins in the padded input
    (t counts from there, and the `response` scope starts there); `instruction_start[b]` is where its instruction
    begins (the `since_user_tag` scope). Both stay right for ragged, left-padded batches; rows that leave the batch
    leave the head (and its state) through `select_rows`, so row b stays slot b."""

    def __init__(self, rules: Sequence[Rule], response_start: torch.Tensor, instruction_start: torch.Tensor) -> None:
        self.rules = list(rules)
        self.response_start = response_start
        self.instruction_start = instruction_start
        self.state: RuleState | None = None
        self.seen = 0

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only these rows (in this order): the decoding loop drops rows that have finished."""
        if self.state is None:
            self.response_start, self.instruction_start = self.response_start[rows], self.instruction_start[rows]
        else:
            self.state.keep(rows)

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
