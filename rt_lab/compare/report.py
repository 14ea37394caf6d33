"""What a comparison reports: the mean ± std table over seeds (and references), its markdown, CSV files, and the
same pairs as official AlpacaEval CLI commands."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from rt_lab.compare.judging import Comparison
from rt_lab.io import atomic_write_text


# the LC columns a table can have, with their headers (rt_lab.compare.lc_winrate.lc_metric decides which)
LC_METRICS = {"lc_win_rate": "LC win rate",
              "lc_win_rate_unofficial": "LC win rate (unofficial: not AlpacaEval's GPT-4-Turbo judge)"}

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
SPREADSHEET_CELL_CHARACTERS = 32_767  # Excel's and LibreOffice's limit per cell


def aggregate(metrics: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of each (model, method, dataset, setting, reference kind) over its
    comparisons: its seeds, times its references where a run has several (`compare.reference.multiple=all`, e.g.
    Hewitt et al.'s rule head against each of the 5 IT seeds)."""
    groups: dict[tuple, list[dict]] = {}
    for row in metrics:
        key = (row["model"], row["method"], row["dataset"], row["setting"], row["reference_kind"])
        groups.setdefault(key, []).append(row)
    table = []
    for (model, method, dataset, setting, reference), rows in groups.items():
        win_rate, win_rate_std = mean_and_std([row["win_rate"] for row in rows])
        per_run = Counter(row["run"] for row in rows)  # references of each run
        table.append({
            "model": model, "method": method, "dataset": dataset, "setting": setting, "reference": reference,
            "seeds": len(per_run), "references": reference_counts(list(per_run.values())),
            "win_rate": win_rate, "win_rate_std": win_rate_std,
            # one comparison: the judge's standard error is the only spread there is
            "standard_error": rows[0]["standard_error"] if len(rows) == 1 else math.nan,
            **{f"{key}{suffix}": value for key in LC_METRICS if any(key in row for row in rows)
               for suffix, value in zip(("", "_std"), mean_and_std([row[key] for row in rows if key in row]))},
            "n_unparsable": sum(row["n_unparsable"] for row in rows),
        })
    return sorted(table, key=lambda row: (row["model"], row["dataset"], row["setting"], row["method"]))


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Over the values that are not NaN: the mean (NaN if none) and the sample std (NaN below two)."""
    values = [value for value in values if not math.isnan(value)]
    return (statistics.fmean(values) if values else math.nan,
            statistics.stdev(values) if len(values) > 1 else math.nan)


def reference_counts(counts: Sequence[int]) -> int | str:
    """References per run: 3, or "2-3" where some runs have fewer (one unfinished)."""
    low, high = min(counts), max(counts)
    return low if low == high else f"{low}-{high}"


def spread(row: dict[str, Any], metric: str = "win_rate") -> str:
    """A table row's `metric` as `plus_minus` writes it; a win rate from one comparison with the judge's standard
    error instead."""
    mean, std = row[metric], row[f"{metric}_std"]
    if metric == "win_rate" and not math.isnan(mean) and math.isnan(std) and not math.isnan(row["standard_error"]):
        return f"{mean:.1f} (se {row['standard_error']:.1f})"
    return plus_minus(mean, std)


def plus_minus(mean: float, std: float, digits: int = 1) -> str:
    """`mean ± std`, the mean alone without a std, "-" without a mean."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table: the header, its rule, then one line per row of cells."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def markdown(table: Sequence[dict[str, Any]], notes: Sequence[str], judge: dict[str, Any],
             reference_sweeps: Sequence[Path] = ()) -> str:
    lc = [key for key in LC_METRICS if any(not math.isnan(row.get(key, math.nan)) for row in table)]
    head = ["model", "method", "dataset", "setting", "reference", "seeds", "references", "win rate"] + [
        LC_METRICS[key] for key in lc]
    lines = [f"Win rate (%) of each method against its reference; mean ± std over a row's comparisons (seeds × "
             f"references; one comparison: ± the judge's standard error). Judge: {json.dumps(judge)}"]
    if reference_sweeps:
        lines.append(f"References from this sweep and {', '.join(str(sweep) for sweep in reference_sweeps)}.")

    def cells(row: dict[str, Any]) -> list[Any]:
        unparsable = f" ({row['n_unparsable']} unparsable)" if row["n_unparsable"] else ""
        return [row["model"], row["method"], row["dataset"], row["setting"] or "-", row["reference"], row["seeds"],
                row["references"], spread(row) + unparsable, *[spread(row, key) for key in lc]]

    lines += ["", *markdown_table(head, map(cells, table))]
    if notes:
        lines += ["", f"Not in this table ({len(notes)}):", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Sequence[dict[str, Any]], for_spreadsheets: bool = False) -> None:
    """`rows` as a CSV file, written atomically. `for_spreadsheets`: text cells are made safe to open in a
    spreadsheet (`spreadsheet_cell`), for files that hold text others wrote (instructions, model outputs)."""
    buffer = io.StringIO()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows([{key: spreadsheet_cell(value) for key, value in row.items()} for row in rows]
                     if for_spreadsheets else rows)
    atomic_write_text(path, buffer.getvalue())


def spreadsheet_cell(value: Any) -> Any:
    """A text cell a spreadsheet shows as text: one it would read as a formula (starting with = + - @, a tab or a
    carriage return) gets a leading apostrophe (OWASP's advice), and one longer than a spreadsheet cell holds is
    cut, saying so. Numbers pass as they are."""
    if not isinstance(value, str):
        return value
    if value.startswith(FORMULA_STARTS):
        value = "'" + value
    if len(value) > SPREADSHEET_CELL_CHARACTERS:
        cut = f" [... cut: {len(value):,} characters in all]"
        value = value[:SPREADSHEET_CELL_CHARACTERS - len(cut)] + cut
    return value


def alpaca_eval_commands(comparisons: Sequence[Comparison]) -> str:
    """The official AlpacaEval CLI on each pair (its LC win rate with its own annotator)."""
    lines = ["# The same pairs through the official AlpacaEval CLI (pip install alpaca_eval; OPENAI_API_KEY set)."]
    for c in comparisons:
        lines.append(f"alpaca_eval --model_outputs {c.run.layout.outputs} --reference_outputs "
                     f"{c.reference.path} --output_path {c.run.layout.alpaca_eval_output(c.reference.name)}")
    return "\n".join(lines) + "\n"
