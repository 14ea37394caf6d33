"""`rules/`: the product-of-experts rule head (Hewitt et al. §6; the rules: rt_lab/generate/rules.py, the head:
rt_lab/generate/rule_head.py). No rule runs unless named in `enabled`; method=rules enables the paper's three.
Each rule's options are the keyword arguments of its class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rt_lab.config.checks import ConfigValueError, at_least, one_of, registered


@dataclass
class EosRampConfig:
    weight: float = 1.0
    """Multiplies the rule's scores."""
    slope: float = 15.0
    """r[eos] += min(cap, slope * t / horizon) for 0 < t < horizon, t = tokens generated so far."""
    horizon: int = 250
    """Nothing at t = 0 or t >= horizon."""
    cap: Optional[float] = None
    """The ramp's ceiling; null: slope."""

    def check(self) -> None:
        at_least("horizon", self.horizon, 1)


@dataclass
class TokenDelta:
    token: str
    """A token's text as it reads after other text (a leading space is part of it)."""
    delta: float
    """The score change."""


def paper_table() -> list[TokenDelta]:
    """Hewitt et al.'s Llama-2 table, resolved through each model's tokenizer."""
    return [TokenDelta(token, delta) for token, delta in (
        ("<", -4), (" <", -4), ("|", -4), (" I", -5), ("I", -5), (" We", -3),
        ("What", -5),  # the paper's table says -3; its code and listing use -5
        (" should", -6), (" *", 1), (" -", 1), ("   ", 1), (" #", 1), (" ##", 1), ("\n", 1), ("!", 1))]


@dataclass
class UniformConfig:
    weight: float = 1.0
    """Multiplies the rule's scores."""
    table: list[TokenDelta] = field(default_factory=paper_table)
    """Token text -> score change, added every step."""


@dataclass
class DiversityConfig:
    weight: float = 1.0
    """Multiplies the rule's scores."""
    penalty: float = 1.5
    """Subtracted once for every distinct token already in scope."""
    scope: str = "since_user_tag"
    """since_user_tag: instruction, tags and response so far (the authors' code); response: the paper's text."""

    def check(self) -> None:
        one_of("scope", self.scope, ("since_user_tag", "response"))


@dataclass
class StartConfig:
    """A fourth rule in the authors' code, off in the paper."""

    weight: float = 1.0
    """Multiplies the rule's scores."""
    scale: float = 5.0
    exclaim: float = 15.0
    newline: float = -10.0


@dataclass
class RulesConfig:
    enabled: list[str] = field(default_factory=lambda: "${method.rules}")  # type: ignore[arg-type,return-value]
    """The rules that run, in order; default: the method's own (method=rules: the paper's three), else none.
    Ablations: rules.enabled=[eos_ramp,uniform]."""
    eos_ramp: EosRampConfig = field(default_factory=EosRampConfig)
    """Raises EOS as the answer grows."""
    uniform: UniformConfig = field(default_factory=UniformConfig)
    """A fixed score change per token."""
    diversity: DiversityConfig = field(default_factory=DiversityConfig)
    """Penalises tokens already used."""
    start: StartConfig = field(default_factory=StartConfig)
    """Shapes the first tokens (off in the paper)."""

    def check(self) -> None:
        if len(set(self.enabled)) != len(self.enabled):
            raise ConfigValueError("enabled", self.enabled, "names a rule twice")
        for name in self.enabled:
            registered("enabled", name, "rt_lab.generate.rules:RULES")
