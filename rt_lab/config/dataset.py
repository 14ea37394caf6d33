"""`dataset/`: the training set (rt_lab/data/datasets.py), with An et al.'s refusal mix and, optionally, its
responses rewritten first (`dataset/refine`, rt_lab/data/refine.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from rt_lab.config.checks import ConfigValueError, as_schema, at_least, registered
from rt_lab.config.source import SourceConfig


@dataclass
class SampleConfig:
    """A seeded subsample instead of every row (An et al.'s 1,000-row draws)."""

    n: int = MISSING
    """Rows to draw."""
    seed: int = 0
    """The draw's seed."""
    how: str = "shuffle_first"
    """The sampler (rt_lab/data/datasets.py SAMPLERS): shuffle_first = random.seed(seed), shuffle the row ids,
    take the first n."""
    rows: Optional[int] = None
    """The source size the draw assumes; another size is refused, since it would pick other rows."""

    def check(self) -> None:
        at_least("n", self.n, 1)
        registered("how", self.how, "rt_lab.data.datasets:SAMPLERS")


@dataclass
class RefusalsConfig(SourceConfig):
    """Refusals An et al. mix into a training set: Bianchi et al.'s safety examples whose answer matches
    `keep_if_output_matches`, shuffled with random.seed(`seed`)."""

    name: Optional[str] = "refusals"
    mirror: Any = field(default_factory=lambda: {
        "file": "an_rt/refusal_data/safety_only_data_Instructions.json", "format": "alpaca"})
    keep_if_output_matches: str = r"\b(ai|sorry)\b"
    """Keep the examples whose answer matches this regular expression (1,829 of 2,483)."""
    seed: int = 0
    """Seeds the shuffle the first `refusal_mix` rows are taken from."""


@dataclass
class RefinePromptConfig:
    version: str = MISSING
    """Part of every cache key: change it with the text, so old rewrites are never taken for new ones."""
    text: str = MISSING
    """The rewriting prompt; {request}: the user turn before the response, {response}: the response."""
    marker: str = MISSING
    """The rewrite is the text after the first line starting with this (case-insensitive); without it the
    original response is kept."""


@dataclass
class RefineConfig:
    """Every training response rewritten before training (An et al. §5.1)."""

    name: str = MISSING
    """The refiner's name (the backend's option); runs on refined data are named `...-<dataset>-refined-...`."""
    max_tokens: int = 8192
    """The longest rewrite, in new tokens (An et al.: 8,192)."""
    dir: str = "${paths.refine_dir}"
    """Where the rewrite cache and the refined sets live, shared by the runs of a sweep."""
    prompt: RefinePromptConfig = field(default_factory=RefinePromptConfig)
    """The rewriting prompt and its marker."""
    backend: Any = MISSING
    """A `judge/` config: the model that writes the rewrites."""

    def check(self) -> None:
        at_least("max_tokens", self.max_tokens, 1)


@dataclass
class DatasetConfig(SourceConfig):
    """The training set: its source, how many rows, and the refusals mixed in."""

    name: Optional[str] = MISSING
    single_task: bool = False
    """A single narrow task (Hewitt et al.): only these may train under method=single_task."""
    sample: Any = None
    """A seeded subsample instead of every row (a SampleConfig)."""
    max_messages: Optional[int] = None
    """Keep only each conversation's first N messages (An et al.'s LIMA: 2)."""
    refusal_mix: int = 0
    """Add this many refusals (An et al. §5.1: 0, 100, 200, 500)."""
    refusals: RefusalsConfig = field(default_factory=RefusalsConfig)
    """Where the refusals come from."""
    refine: Optional[RefineConfig] = None
    """Rewrite every training response first: dataset/refine=hf_local or openai."""

    def check(self) -> None:
        super().check()
        as_schema("sample", self.sample, SampleConfig)
        if self.sample and self.limit is not None:
            raise ConfigValueError("limit", self.limit, "set dataset.limit (first rows) or dataset.sample (a seeded "
                                   "subsample), not both")
        at_least("max_messages", self.max_messages, 1)
        at_least("refusal_mix", self.refusal_mix, 0)
