"""Comparison plots: win rate per method x dataset, one panel per model (and setting), with error bars; and the
papers' figures where the sweep has their axis (rt_lab.compare.figures decides and computes their numbers): win
rate vs epoch, refusal rate vs refusals mixed in, the rule ablation bars."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from rt_lab.io import atomic_write_json


def win_rates(table: Sequence[dict[str, Any]], path: Path) -> list[Path]:
    """The win-rate plot (`path`, a PNG) from `rt_lab.compare.aggregate` rows: bars = mean win rate over seeds
    (× references), error bars = their std (one comparison: the judge's standard error); the dashed line is parity."""
    plt = pyplot()
    panels: dict[tuple[str, str, str], list[dict]] = {}
    for row in table:
        panels.setdefault((row["model"], row["setting"], row["reference"]), []).append(row)
    figure, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 1.2 * _widest(panels)) * len(panels), 4),
                                squeeze=False)
    for axis, ((model, setting, reference), rows) in zip(axes[0], sorted(panels.items())):
        datasets = sorted({row["dataset"] for row in rows})
        methods = sorted({row["method"] for row in rows})
        width = 0.8 / len(methods)
        for offset, method in enumerate(methods):
            cells = {row["dataset"]: row for row in rows if row["method"] == method}
            x = [i + (offset - (len(methods) - 1) / 2) * width for i, d in enumerate(datasets) if d in cells]
            means = [cells[d]["win_rate"] for d in datasets if d in cells]
            errors = [error_bar(cells[d]) for d in datasets if d in cells]
            axis.bar(x, means, width, yerr=errors, capsize=3, label=method)
        axis.axhline(50, color="grey", linestyle="--", linewidth=1)
        axis.set_xticks(range(len(datasets)), datasets)
        axis.set_ylim(0, 115)  # headroom for the legend above the 100% mark
        axis.set_yticks(range(0, 101, 20))
        axis.set_ylabel("win rate (%)")
        axis.set_title("\n".join(part for part in (model, setting, f"vs {reference}") if part), fontsize=9)
        axis.legend(fontsize=7, loc="upper center", ncol=min(3, len(methods)), frameon=False)
    return [save_figure(figure, path)]


def win_rate_vs_epoch(panels: Sequence[dict[str, Any]], path: Path) -> Path:
    """The win rate vs epoch plot (`path`, a PNG; its numbers in the JSON beside it) from
    `rt_lab.compare.figures.epoch_series`: one panel per model, one line per method x dataset x setting, error bars
    as in `win_rates`; the dashed line is parity with the reference."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        for line in panel["lines"]:
            axis.errorbar(line["x"], line["y"], yerr=line["error"], marker="o", capsize=3, label=line["label"])
        axis.axhline(50, color="grey", linestyle="--", linewidth=1)
        _frame(axis, panel["lines"], "epoch", "win rate (%)", 100, f"{panel['model']}\nvs {panel['reference']}")
    return save_figure(figure, path, panels)


def refusal_vs_mix(panels: Sequence[dict[str, Any]], path: Path) -> Path:
    """Refusal rate vs the number of refusals mixed into training (An et al. Fig. 5, Tables 15-16; `path`, a PNG;
    its numbers in the JSON beside it) from `rt_lab.compare.figures.refusal_series`: one panel per model x
    dataset, one colour per method (x setting): solid the harmful sets' mean refusal rate, dashed the false-refusal
    rate on XSTest's safe prompts, error bars the std over seeds; hollow markers the paper's figures."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        colours = {}
        for line in panel["lines"]:
            colour = colours.setdefault(line["label"], f"C{len(colours)}")
            harmful = line["metric"] == "mean_refusal_rate"
            axis.errorbar(line["x"], line["y"], yerr=line["error"], marker="o", capsize=3, color=colour,
                          linestyle="-" if harmful else "--",
                          label=f"{line['label']}: {'refusal' if harmful else 'false refusal (XSTest safe)'}")
        for line in panel["paper"]:
            axis.plot(line["x"], line["y"], linestyle="none", marker="o", markerfacecolor="none", markersize=9,
                      color=colours.get(line["label"], "black"), label=f"{line['label']}: paper ({line['metric']})")
        _frame(axis, panel["lines"], "refusals mixed into training", "rate", 1.05,
               f"{panel['model']} {panel['dataset']}")
    return save_figure(figure, path, panels)


def _frame(axis: Any, lines: Sequence[dict[str, Any]], xlabel: str, ylabel: str, top: float, title: str) -> None:
    """Ticks at every x the lines have, labels, the y range from 0, the title and the legend."""
    axis.set_xticks(sorted({x for line in lines for x in line["x"]}))
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_ylim(0, top)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=6, frameon=False)


def rule_ablation(panels: Sequence[dict[str, Any]], path: Path) -> Path:
    """Win rate of each set of rules (Hewitt et al. Table 4; `path`, a PNG; its numbers in the JSON beside it) from
    `rt_lab.compare.figures.rule_ablation_series`: one panel per model x setting x reference, one bar per rule set
    (mean over seeds x references, error bars their std), the paper's figure as a black tick where it has one; the
    dashed line is parity."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 1.3 * max(len(p["bars"]) for p in panels))
                                                         * len(panels), 4), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        bars = panel["bars"]
        axis.bar(range(len(bars)), [bar["mean"] for bar in bars], 0.6, yerr=[bar["error"] for bar in bars],
                 capsize=3, color=[f"C{i}" for i in range(len(bars))])
        papers = [(i, bar["paper"]) for i, bar in enumerate(bars) if bar["paper"] is not None]
        if papers:
            axis.scatter(*zip(*papers), marker="_", s=500, color="black", zorder=3, label="paper")
            axis.legend(fontsize=7, frameon=False)
        axis.axhline(50, color="grey", linestyle="--", linewidth=1)
        axis.set_xticks(range(len(bars)), [bar["label"] for bar in bars], fontsize=7)
        axis.set_ylabel(f"{panel['metric'].replace('_', ' ')} (%)")
        axis.set_ylim(0, 100)
        axis.set_title("\n".join(part for part in (panel["model"], panel["setting"], f"vs {panel['reference']}")
                                 if part), fontsize=9)
    return save_figure(figure, path, panels)


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only backend: every rt_lab figure is written, never shown."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on cluster nodes
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path, series: Sequence[dict[str, Any]] | None = None) -> Path:
    """Write the figure to `path` (PNG) atomically and close it; the numbers it plots (`series`), if given, go to
    a JSON file of the same name beside it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    tmp.replace(path)
    if series is not None:
        atomic_write_json(path.with_suffix(".json"), list(series))
    return path


def error_bar(row: dict[str, Any], metric: str = "win_rate") -> float:
    """The error bar of `metric` in a table row: its std over seeds (x references); for a win rate from one
    comparison, the judge's standard error; 0 when neither exists."""
    for key in (f"{metric}_std", *(["standard_error"] if metric == "win_rate" else [])):
        value = row.get(key, math.nan)
        if not math.isnan(value):
            return value
    return 0.0


def _widest(panels: dict) -> int:
    return max(len({row["dataset"] for row in rows}) * len({row["method"] for row in rows}) for rows in
               panels.values())
