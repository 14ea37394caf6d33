"""What every judge is: the `Judge` interface, its answers (`Judgment`, `Reply`), its errors, and the two ways of
reading a label from an answer (its log-probabilities or its text)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

Messages = list[dict[str, str]]  # chat messages, [{"role": ..., "content": ...}, ...]

# A preference lies in [1, 2]: 1 = the reference wins, 2 = the model wins (AlpacaEval's scale)
DRAW = 1.5  # a tie; identical outputs are draws without asking the judge


class JudgeError(RuntimeError):
    """The judging run cannot go on (configuration, authentication, spend cap); judged pairs stay cached."""


class SpendCapExceeded(JudgeError):
    pass


@dataclass(frozen=True)
class Judgment:
    """A judge's answer to one question, or None and why there is none. What the value means is the question's:
    P(the second label) from `Judge.choose`, a pair's AlpacaEval preference in [1, 2] from `judge_pairs`,
    P(refusal) from a refusal classifier."""

    value: float | None
    reason: str | None = None
    # False for transport failures (server down after every retry): not cached, so a rerun asks again;
    # a malformed reply is an answer (temperature 0) and is cached like any other.
    final: bool = True

    @property
    def answered(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class Reply:
    """One generated answer, or why there is none (`final` as in Judgment)."""

    text: str | None
    reason: str | None = None
    final: bool = True

    @property
    def answered(self) -> bool:
        return self.text is not None


# Reads P(labels[1]) from the (token, logprob) candidates of the answer's first token.
LogprobReader = Callable[[Sequence[tuple[str, float]]], Judgment]


def label_verdict(top: Sequence[tuple[str, float]], labels: Sequence[str]) -> Judgment:
    """P(second label) from (token, logprob) candidates for the answer's first token: the probability mass of
    each label (surrounding whitespace ignored: "M" and " M" are the same answer), renormalised over the two
    labels, as AlpacaEval 2's weighted judges do."""
    mass = {label: 0.0 for label in labels}
    for token, logprob in top:
        if token.strip() in mass:
            mass[token.strip()] += math.exp(logprob)
    total = sum(mass.values())
    if total == 0:
        return Judgment(None, f"neither label {list(labels)} among the top logprobs {[token for token, _ in top]}")
    return Judgment(mass[labels[1]] / total)


def text_verdict(text: str, labels: Sequence[str]) -> Judgment:
    """The label a generated answer names: the one label that stands as a word of its own in it ("M", " m.",
    "The best model identifier is: m."; labels are case-sensitive, as AlpacaEval's m and M). P(second label) is 0
    or 1; an answer naming neither label, or both, is unparsable."""
    pattern = "|".join(re.escape(label) for label in labels)
    # a word of its own: quotes around it are fine, a contraction ("I'm") is not
    named = set(re.findall(rf"(?<!\w)(?<!\w['\u2019])({pattern})(?!\w)(?!['\u2019]\w)", text))
    if len(named) != 1:
        return Judgment(None, f"the reply {text[:80]!r} names {'both labels' if named else 'neither label'} of "
                              f"{list(labels)}")
    return Judgment(float(named.pop() == labels[1]))


class Judge:
    both_orders: bool = True
    max_concurrency: int = 1
    protocol: Any = None  # the pairwise protocol (rt_lab.judges.protocols.PairProtocol) that `compare` follows

    def identity(self) -> dict[str, Any]:
        """Everything that changes the judge's answer; part of every cache key."""
        raise NotImplementedError

    def choose(self, messages: Messages, labels: tuple[str, str], read: LogprobReader | None = None) -> Judgment:
        """P(labels[1]) as the judge's one-label answer: by default the two labels' renormalised probability mass
        (`label_verdict`); `read` reads the candidates another way (a protocol's own parser)."""
        raise NotImplementedError

    def generate(self, messages: Messages, max_tokens: int) -> Reply:
        """The judge's greedy answer, up to max_tokens: for judges that reason before they decide."""
        raise NotImplementedError

    def compare(self, instruction: str, first: str, second: str) -> Judgment:
        """P(the second output is better), asked and read as the judge's protocol does."""
        return self.choose(self.protocol.messages(instruction, first, second), self.protocol.labels,
                           self.protocol.read)
