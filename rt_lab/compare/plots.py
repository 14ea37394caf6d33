"""Comparison plots: win rate per method x dataset, one panel per model (and setting), with error bars; win rate
vs epoch for epoch selection."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence


def win_rates(table: Sequence[dict[str, Any]], path: Path) -> list[Path]:
    """The win-rate plot (`path`, a PNG) from `rt_lab.compare.aggregate` rows: bars = mean win rate over seeds (× references),
    error bars = their std (one comparison: the judge's standard error); the dashed line is parity."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on cluster nodes
    import matplotlib.pyplot as plt

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
            errors = [_error(cells[d]) for d in datasets if d in cells]
            axis.bar(x, means, width, yerr=errors, capsize=3, label=method)
        axis.axhline(50, color="grey", linestyle="--", linewidth=1)
        axis.set_xticks(range(len(datasets)), datasets)
        axis.set_ylim(0, 115)  # headroom for the legend above the 100% mark
        axis.set_yticks(range(0, 101, 20))
        axis.set_ylabel("win rate (%)")
        axis.set_title("\n".join(part for part in (model, setting, f"vs {reference}") if part), fontsize=9)
        axis.legend(fontsize=7, loc="upper center", ncol=min(3, len(methods)), frameon=False)
    return [save_figure(figure, path)]


def win_rate_vs_epoch(table: Sequence[dict[str, Any]], path: Path) -> Path:
    """The win rate vs epoch plot (`path`, a PNG) from `rt_lab.compare.epoch_selection.epoch_table` rows: one panel per model, one line per
    method x dataset x setting, error bars as in `win_rates`; the dashed line is parity with the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({row["model"] for row in table})
    figure, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for axis, model in zip(axes[0], models):
        lines: dict[tuple[str, str, str], list[dict]] = {}
        for row in table:
            if row["model"] == model:
                lines.setdefault((row["method"], row["dataset"], row["setting"]), []).append(row)
        for (method, dataset, setting), rows in sorted(lines.items()):
            axis.errorbar([row["epoch"] for row in rows], [row["win_rate"] for row in rows],
                          yerr=[_error(row) for row in rows], marker="o", capsize=3,
                          label=" ".join(part for part in (method, dataset, setting) if part))
        axis.axhline(50, color="grey", linestyle="--", linewidth=1)
        axis.set_xticks(sorted({row["epoch"] for row in table}))
        axis.set_xlabel("epoch")
        axis.set_ylabel("win rate (%)")
        axis.set_ylim(0, 100)
        axis.set_title(model, fontsize=9)
        axis.legend(fontsize=7, frameon=False)
    return save_figure(figure, path)


def save_figure(figure: Any, path: Path) -> Path:
    """Write the figure to `path` (PNG) atomically and close it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    tmp.replace(path)
    return path


def _error(row: dict[str, Any]) -> float:
    for key in ("win_rate_std", "standard_error"):
        if not math.isnan(row[key]):
            return row[key]
    return 0.0


def _widest(panels: dict) -> int:
    return max(len({row["dataset"] for row in rows}) * len({row["method"] for row in rows}) for rows in
               panels.values())
