"""One run judged against one reference: outputs aligned by instruction, each pair judged (cached), the run's
metrics and its `comparison/vs_<reference>.json`."""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rt_lab.config.root import RootConfig
from rt_lab.compare.runs import Reference, Run, describe
from rt_lab.io import atomic_write_json
from rt_lab.layout import RunDir, comparison_name
from rt_lab.judges import Judge, judge_pairs
from rt_lab.compare.winrate import summarize

log = logging.getLogger(__name__)


@dataclass
class Comparison:
    run: Run
    reference: Reference
    rows: list[dict] = field(default_factory=list)  # instruction, output, reference, preference, reason
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """`vs_<reference>`, the stem of the run's files and W&B keys about this comparison."""
        return comparison_name(self.reference.name)


def align(run: Run, reference: Reference) -> tuple[list[str], list[str], list[str]]:
    """(instructions, outputs, references) in the run's order, matched by instruction text."""
    by_instruction = {record["instruction"]: record["output"] for record in reference.records}
    instructions, outputs, references = [], [], []
    for index, record in enumerate(run.outputs()):
        if record["instruction"] not in by_instruction:
            raise ValueError(f"{run.layout.outputs} item {index}: instruction "
                             f"{record['instruction'][:60]!r} has no output in the reference {reference.path}")
        instructions.append(record["instruction"])
        outputs.append(record["output"])
        references.append(by_instruction[record["instruction"]])
    return instructions, outputs, references


def compare_pair(run: Run, reference: Reference, judge: Any, cache: Path, lc: str, varying: set[str],
                 also_cached: Sequence[Path] = ()) -> Comparison:
    instructions, outputs, references = align(run, reference)
    judgments = judge_pairs(judge, instructions, outputs, references, cache, also_cached)
    comparison = Comparison(run, reference)
    comparison.rows = [{"instruction": i, "output": o, "reference": r, "preference": j.value,
                        "reason": j.reason} for i, o, r, j in zip(instructions, outputs, references, judgments)]
    preferences = [j.value for j in judgments]
    comparison.metrics = {**describe(run, varying), "run": run.name, "reference": reference.name,
                          "reference_kind": reference.kind, **summarize(preferences),
                          "avg_length": statistics.fmean(len(o) for o in outputs) if outputs else math.nan}
    if lc != "off":
        from rt_lab.compare.lc_winrate import lc_metric

        comparison.metrics[lc_metric(judge.identity())] = length_controlled(instructions, outputs, references,
                                                                             preferences, lc)
    atomic_write_json(run.layout.verdicts(reference.name), {"metrics": comparison.metrics, "rows": comparison.rows})
    return comparison


def length_controlled(instructions: list[str], outputs: list[str], references: list[str],
                      preferences: list[float | None], mode: str) -> float:
    """The LC win rate where it is defined (the 805 AlpacaEval instructions) and computable (the optional
    alpaca_eval package); `mode=auto` gives NaN otherwise, `mode=on` an error."""
    from rt_lab.compare.lc_winrate import LengthControlUnavailable, length_controlled_win_rate

    try:
        return length_controlled_win_rate(instructions, outputs, references, preferences)["lc_win_rate"]
    except LengthControlUnavailable as err:
        if mode == "on":
            raise
        log.info("no length-controlled win rate: %s", err)
        return math.nan


def judge_epoch(judge: Judge, reference: Reference, run_dir: Path, epoch: int, run_cfg: RootConfig,
                length_controlled: str) -> dict[str, Any]:
    """An epoch's outputs judged like a sweep comparison judges a run (rt_lab.compare): the rows in
    `epochs/<N>/comparison/vs_<reference>.json`, the judgments cached in `epochs/judgments.jsonl`."""
    layout = RunDir(run_dir)
    epoch_run = Run(layout.epoch(epoch).path, run_cfg, [])
    return compare_pair(epoch_run, reference, judge, layout.epoch_judgments, length_controlled, set()).metrics
