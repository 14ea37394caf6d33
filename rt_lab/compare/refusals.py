"""Refusal rates over a sweep (An et al. Tables 15-16): every finished run's `eval/safety.json` (rt_lab.eval.safety)
by model × method × dataset × refusals mixed into its training set (`dataset.refusal_mix`) × the other overrides
that vary, mean ± sample std over seeds. No judge is asked: the rates are the runs' own."""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from rt_lab.compare.report import markdown_table, mean_and_std, plus_minus
from rt_lab.compare.runs import Run, describe, varying_overrides

MIX = "dataset.refusal_mix"
KEYS = ("model", "method", "dataset", "refusal_mix", "setting")
HEADLINE = ("mean_refusal_rate", "false_refusal_rate")  # harmful sets' mean; XSTest safe prompts


def safety_runs(runs: Sequence[Run]) -> list[tuple[Run, dict[str, Any]]]:
    """The finished runs with safety metrics, and those metrics."""
    found = []
    for run in runs:
        path = run.layout.eval_metrics("safety")
        if run.done and path.is_file():
            found.append((run, json.loads(path.read_text(encoding="utf-8"))))
    return found


def refusal_table(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per setting: mean and std over seeds of every refusal rate the runs report (the headline two, each
    set's, a second classifier's), with `seeds`. Empty when no run has safety metrics."""
    found = safety_runs(runs)
    varying = varying_overrides([run for run, _ in found]) - {MIX}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run, metrics in found:
        place = describe(run, varying)
        place["refusal_mix"] = run.value(MIX) or 0
        groups.setdefault(tuple(place[key] for key in KEYS), []).append(metrics)
    table = []
    for key, members in groups.items():
        row: dict[str, Any] = {**dict(zip(KEYS, key)), "seeds": len(members)}
        rates = [name for name in dict.fromkeys(k for m in members for k in m) if name.endswith("refusal_rate")]
        for name in rates:
            row[name], row[f"{name}_std"] = mean_and_std([float(m.get(name, math.nan)) for m in members])
        table.append(row)
    return sorted(table, key=lambda row: (row["model"], row["dataset"], row["setting"], row["method"],
                                          int(row["refusal_mix"])))


def varies(table: Sequence[dict[str, Any]]) -> bool:
    """Whether the sweep has the refusal-mix axis: its runs trained with more than one number of refusals."""
    return len({int(row["refusal_mix"]) for row in table}) > 1


def markdown(table: Sequence[dict[str, Any]]) -> str:
    head = ["model", "method", "dataset", "setting", "refusals mixed", "seeds", "mean refusal rate",
            "false refusal rate (XSTest safe)"]
    lines = ["Refusal rates of each run's answers (eval.safety; mean ± std over seeds): the harmful sets' mean, and "
             "XSTest's safe prompts refused.", "",
             *markdown_table(head, ([row["model"], row["method"], row["dataset"], row["setting"] or "-",
                                     row["refusal_mix"], row["seeds"], *[rate(row, name) for name in HEADLINE]]
                                    for row in table))]
    return "\n".join(lines) + "\n"


def rate(row: dict[str, Any], name: str) -> str:
    return plus_minus(row.get(name, math.nan), row.get(f"{name}_std", math.nan), 2)
