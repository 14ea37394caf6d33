"""The rules of Hewitt et al. §6's rule-based head: what a rule is, the registry, and the built-in rules.

Each step, rules score every vocabulary token (`r`, starting at 0); rt_lab.generate.rule_head multiplies `r` into
the model as a product of experts. Rules are tokenizer-agnostic: tables name token *strings*, resolved through the
model's tokenizer. Add a rule with `@register_rule("name")` on a class taking `(tokenizer, **its config)` with a
`scores` method.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import torch

from rt_lab.config.rules import RulesConfig
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
        self._table: torch.Tensor | None = None

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

    def table(self, vocab_size: int, device: torch.device) -> torch.Tensor:
        """(4, V): the scores at t = 0, 1 and 2, then a row of zeros for every other t; built once per device, so
        that a decoding step reads it without a host copy or sync."""
        if self._table is None or self._table.shape[1] != vocab_size or self._table.device != device:
            table = torch.zeros(len(self.at_step) + 2, vocab_size)
            first = self.first[:vocab_size]
            table[0, : len(first)] = self.scale * first
            for t, (ids, delta) in self.at_step.items():
                table[t, ids] = delta
            self._table = table.to(device)
        return self._table

    def scores(self, step: Step, vocab_size: int) -> torch.Tensor:
        table = self.table(vocab_size, step.generated.device)
        t, zeros = step.generated, len(table) - 1
        return table[torch.where((t >= 0) & (t < zeros), t, zeros)]


def build_rules(cfg: RulesConfig, tokenizer: Any) -> list[Rule]:
    """The enabled rules of a `rules` config, in the order given."""
    return [RULES.lookup(name, "rules.enabled item")(tokenizer, **dict(cfg.get(name) or {}))
            for name in cfg.enabled]
