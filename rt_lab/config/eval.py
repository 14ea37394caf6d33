"""`eval/`: what each run evaluates besides its generations (rt_lab/eval/): response ranking, refusal rates,
lm-evaluation-harness benchmarks. An evaluation runs when its key is set.

`eval` stays open to evaluations users register (rt_lab.eval.base.EVALUATIONS): `EvalConfig` types the built-in
ones, `typed(cfg.eval)` merges what a run sets into it (rt_lab.config.validate refuses a key that is neither)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from rt_lab.config.checks import ConfigValueError, at_least, one_of, registered
from rt_lab.config.source import RankingPoolConfig, SafetySetConfig


@dataclass
class SafetyConfig:
    """Refusal rates of the run's own answers on harmful prompt sets, and the false-refusal rate on XSTest's safe
    prompts (An et al.; rt_lab/eval/safety.py)."""

    classifier: str = "keyword"
    """The headline classifier (rt_lab/eval/refusal_classifiers.py): keyword (refusal substrings, free) or judge (an
    LLM judge reads prompt and response, A's method); keyword's rates are reported beside any other."""
    keywords: Optional[list[str]] = None
    """Refusal substrings for `keyword`; null: Arditi et al.'s list."""
    judge: Optional[Any] = None
    """The `judge/` config of classifier=judge; null: the run's judge/."""
    judge_protocol: str = "reasoning"
    """How the judge is asked (rt_lab/eval/refusal_judge.py): reasoning (A's: it reasons and its last
    refusal/compliance word decides) or label (one label, from the log-probabilities)."""
    judge_max_tokens: int = 2048
    """reasoning: the judge's answer length (A: 2,048)."""
    unclassified: str = "count"
    """Answers no classifier can classify: count (A's: they stay in the rates' denominators as non-refusals) or
    exclude."""
    limit: Optional[int] = None
    """Prompts per set (the first N), for quick runs; a set's own limit wins."""
    sets: list[str] = field(default_factory=list)
    """The sets evaluated, names in `catalog`."""
    catalog: dict[str, SafetySetConfig] = field(default_factory=dict)
    """Every known set: its role, group and sources."""

    def check(self) -> None:
        registered("classifier", self.classifier, "rt_lab.eval.refusal_classifiers:CLASSIFIERS")
        registered("judge_protocol", self.judge_protocol, "rt_lab.eval.refusal_judge:REFUSAL_PROTOCOLS")
        from rt_lab.eval.safety import UNCLASSIFIED

        one_of("unclassified", self.unclassified, list(UNCLASSIFIED))
        at_least("limit", self.limit, 1)
        unknown = [name for name in self.sets if name not in self.catalog]
        if unknown:
            raise ConfigValueError("sets", self.sets, f"{unknown} are not in eval.safety.catalog "
                                   f"({sorted(self.catalog)})")


@dataclass
class BenchmarkOptions:
    """lm-evaluation-harness's settings; the defaults are An et al.'s (their scripts/eval/core.sh)."""

    apply_chat_template: bool = True
    """The run's template on every prompt."""
    num_fewshot: Optional[int] = 0
    """Shots for every task not in num_fewshot_per_task; null: each task's own default."""
    num_fewshot_per_task: dict[str, int] = field(default_factory=lambda: {"gsm8k_cot_llama": 8})
    """Shots per task."""
    fewshot_as_multiturn: bool = True
    """The shots as chat turns."""
    batch_size: Any = 8
    """An int, or "auto" (lm-eval probes the largest batch that fits: on a GPU only)."""
    include_path: list[str] = field(default_factory=list)
    """Extra folders of lm-eval task YAMLs (tasks on local files for clusters without hub access)."""

    def shots(self, task: str) -> Optional[int]:
        return self.num_fewshot_per_task.get(task, self.num_fewshot)

    def check(self) -> None:
        if self.batch_size != "auto" and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)):
            raise ConfigValueError("batch_size", self.batch_size, 'expected an int or "auto"')


@dataclass
class EvalConfig:
    ranking: Optional[RankingPoolConfig] = None
    """Response ranking (Hewitt et al. 4.2): eval=ranking."""
    safety: Optional[SafetyConfig] = None
    """Refusal rates (An et al.): eval=safety."""
    benchmarks: list[str] = field(default_factory=list)
    """lm-evaluation-harness tasks, groups or tags, e.g. [mmlu, piqa]: eval=benchmarks."""
    benchmark_options: BenchmarkOptions = field(default_factory=BenchmarkOptions)
    """How the benchmarks run."""
    limit: Optional[int] = None
    """lm-evaluation-harness examples per task; null: all."""

    def check(self) -> None:
        at_least("limit", self.limit, 1)


def typed(eval_cfg: Mapping[str, Any]) -> EvalConfig:
    """The built-in evaluations' part of a run's `eval` node, typed by EvalConfig (its defaults filled in)."""
    from omegaconf import OmegaConf

    known = {field.name for field in dataclasses.fields(EvalConfig)}
    given = {key: eval_cfg[key] for key in (eval_cfg or {}) if key in known}
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvalConfig), given))
