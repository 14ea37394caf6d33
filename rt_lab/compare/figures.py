"""Which of the papers' figures a sweep gets, and their numbers: each only when the sweep's runs have its axis,
read from their configs. Win rate vs epoch (runs with `generation.at_epochs`; rt_lab.compare.epoch_selection),
refusal rate vs refusals mixed in (runs trained with more than one `dataset.refusal_mix` and with safety metrics;
An et al. Fig. 5), and the rule ablation bars (runs with more than one `rules.enabled`; Hewitt et al. Table 4).
rt_lab.compare.plots draws the panels these functions return; the paper's figures join them where a preset names
its table (`compare.paper_table`)."""

from __future__ import annotations

import math
from typing import Any, Sequence

from rt_lab.compare.paper import PaperTable, beside
from rt_lab.compare.plots import error_bar
from rt_lab.compare.refusals import HEADLINE
from rt_lab.compare.report import LC_METRICS
from rt_lab.compare.runs import Run, describe


def has_epochs(runs: Sequence[Run]) -> bool:
    """Whether any run answered at listed epochs of its training (`generation.at_epochs`)."""
    return any(run.cfg.get("generation", {}).get("at_epochs") for run in runs)


def epoch_series(table: Sequence[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Win rate (y) vs epoch (x) from `rt_lab.compare.epoch_selection.epoch_table` rows: one panel per model, one
    line per method x dataset x setting."""
    panels = []
    for model in sorted({row["model"] for row in table}):
        lines: dict[str, list[dict]] = {}
        for row in table:
            if row["model"] == model:
                label = " ".join(part for part in (row["method"], row["dataset"], row["setting"]) if part)
                lines.setdefault(label, []).append(row)
        panels.append({"model": model, "reference": reference, "lines": [
            {"label": label, "x": [row["epoch"] for row in rows], "y": [row["win_rate"] for row in rows],
             "error": [error_bar(row) for row in rows]} for label, rows in sorted(lines.items())]})
    return panels


def rule_sets(runs: Sequence[Run]) -> dict[str, list[str]]:
    """The rules each method label of the table stands for (`rules[eos_ramp,uniform]` -> its rules), for the runs
    with a rule head."""
    sets = {}
    for run in runs:
        enabled = list(run.value("rules.enabled") or [])
        if enabled:
            sets[describe(run, set())["method"]] = enabled
    return sets


def has_rule_axis(runs: Sequence[Run]) -> bool:
    return len({tuple(rules) for rules in rule_sets(runs).values()}) > 1


def rule_ablation_series(table: Sequence[dict[str, Any]], sets: dict[str, list[str]],
                         paper: PaperTable | None) -> list[dict[str, Any]]:
    """One panel per model x setting x reference kind with more than one rule set: a bar per rule set, labelled by
    the rules it lacks against the panel's fullest set. The bars show the LC win rate where the panel's rows have
    one (the papers' metric), else the win rate; the paper's figure where its table has the row and that metric."""
    papers = {(line["model"], line["method"], line["metric"]): line["paper"]
              for line in (beside(paper, table)[0] if paper else [])}
    groups: dict[tuple, list[dict]] = {}
    for row in table:
        if row["method"] in sets:
            groups.setdefault((row["model"], row["setting"], row["reference"]), []).append(row)
    panels = []
    for (model, setting, reference), rows in sorted(groups.items()):
        if len({tuple(sets[row["method"]]) for row in rows}) < 2:
            continue
        metric = next((key for key in LC_METRICS if any(not math.isnan(row.get(key, math.nan)) for row in rows)),
                      "win_rate")
        fullest = max((sets[row["method"]] for row in rows), key=len)
        bars = []
        for row in rows:
            rules = sets[row["method"]]
            missing = [rule for rule in fullest if rule not in rules]
            extra = [rule for rule in rules if rule not in fullest]
            label = "all: " + ", ".join(rules) if not missing and not extra else \
                " ".join([*(f"-{rule}" for rule in missing), *(f"+{rule}" for rule in extra)])
            bars.append({"label": label, "method": row["method"], "rules": rules, "mean": row[metric],
                         "error": error_bar(row, metric), "seeds": row["seeds"],
                         "paper": papers.get((model, row["method"], metric))})
        bars.sort(key=lambda bar: (not bar["label"].startswith("all"), bar["label"]))
        panels.append({"model": model, "setting": setting, "reference": reference, "metric": metric, "bars": bars})
    return panels


def refusal_series(table: Sequence[dict[str, Any]], paper: PaperTable | None) -> list[dict[str, Any]]:
    """Refusal rate vs refusals mixed in, from `rt_lab.compare.refusals.refusal_table` rows: one panel per model x
    dataset, a line per method (x setting) and headline rate, and the paper's figures of the same rows."""
    lines = beside(paper, table)[0] if paper else []
    panels = []
    for model, dataset in sorted({(row["model"], row["dataset"]) for row in table}):
        rows = [row for row in table if (row["model"], row["dataset"]) == (model, dataset)]
        labels = sorted({label(row) for row in rows})
        ours, theirs = [], []
        for name in labels:
            members = sorted((row for row in rows if label(row) == name), key=lambda row: int(row["refusal_mix"]))
            for metric in HEADLINE:
                present = [row for row in members if not math.isnan(row.get(metric, math.nan))]
                if present:
                    ours.append({"label": name, "metric": metric, "x": [int(row["refusal_mix"]) for row in present],
                                 "y": [row[metric] for row in present],
                                 "error": [error_bar(row, metric) for row in present]})
                published = sorted((int(line["refusal_mix"]), line["paper"]) for line in lines
                                   if line["metric"] == metric and (line["model"], line["dataset"]) == (model, dataset)
                                   and name == label(line))
                if published:
                    theirs.append({"label": name, "metric": metric, "x": [x for x, _ in published],
                                   "y": [y for _, y in published]})
        panels.append({"model": model, "dataset": dataset, "lines": ours, "paper": theirs})
    return panels


def label(row: dict[str, Any]) -> str:
    return " ".join(part for part in (row["method"], row.get("setting", "")) if part)

