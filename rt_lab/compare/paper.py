"""The paper beside the result. A preset that reproduces a published table names it (`compare.paper_table: ID`, a
table of `paper_numbers.yaml` in this folder), and the comparison lists, for every paper row that rows of rt_lab's
tables match, the paper's figure, rt_lab's mean ± std, their difference, and whether rt_lab's mean lies within
the paper's ± std (`paper.csv`, and a section of `summary.md`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from omegaconf import OmegaConf

from rt_lab.compare.report import LC_METRICS, markdown_table, plus_minus
from rt_lab.io import package_path

PAPER_NUMBERS = "pkg://compare/paper_numbers.yaml"
FRACTIONS = ("mean_refusal_rate", "false_refusal_rate")  # reported as fractions; every other metric in %
TOLERANCE = 1e-9  # 43.3 - 1.1 is 42.199999999999996 in floating point: a mean of 42.2 lies within


@dataclass(frozen=True)
class PaperRow:
    keys: dict[str, Any]  # the rt_lab columns that place the row, e.g. {model: llama2_7b, method: rt}
    figures: dict[str, tuple[float, float | None]]  # metric -> (mean, std or None where the paper gives none)


@dataclass(frozen=True)
class PaperTable:
    id: str
    source: str
    metrics: list[str]
    rows: list[PaperRow]


def paper_tables() -> dict[str, PaperTable]:
    """Every table of paper_numbers.yaml; a malformed entry is an error naming the table and row."""
    path = package_path(PAPER_NUMBERS)
    raw = OmegaConf.to_container(OmegaConf.load(path))
    tables = {}
    for name, table in raw["tables"].items():
        metrics = list(table["metrics"])
        rows = []
        for index, row in enumerate(table["rows"]):
            where = f"{path}: table {name} row {index}"
            missing = [metric for metric in metrics if metric not in row]
            if missing:
                raise ValueError(f"{where}: no figure for {missing}")
            figures = {metric: figure(row[metric], where) for metric in metrics}
            rows.append(PaperRow({k: v for k, v in row.items() if k not in metrics}, figures))
        tables[name] = PaperTable(name, table["source"], metrics, rows)
    return tables


def figure(value: Any, where: str) -> tuple[float, float | None]:
    if isinstance(value, dict):
        return float(value["mean"]), None if value.get("std") is None else float(value["std"])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), None
    raise ValueError(f"{where}: a figure is a number or {{mean, std}}, not {value!r}")


def paper_table(name: str) -> PaperTable:
    tables = paper_tables()
    if name not in tables:
        raise KeyError(f"compare.paper_table={name}: no such table in {package_path(PAPER_NUMBERS)}; "
                       f"tables: {sorted(tables)}")
    return tables[name]


def columns(metric: str) -> tuple[str, ...]:
    """rt_lab's columns for a paper metric: the LC win rate is `lc_win_rate_unofficial` under any judge but
    AlpacaEval's GPT-4-Turbo (rt_lab.compare.lc_winrate)."""
    return tuple(LC_METRICS) if metric == "lc_win_rate" else (metric,)


def within(ours: float, mean: float, std: float | None) -> bool | None:
    """Whether rt_lab's mean lies within the paper's mean ± std; None without a std or an rt_lab mean."""
    if std is None or math.isnan(ours):
        return None
    return abs(ours - mean) <= std + TOLERANCE


def beside(paper: PaperTable, rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One line per (paper row, rt_lab row it matches, metric): the paper's figure and rt_lab's, their difference
    (rt_lab - paper) and `within_std`; and how many paper rows no rt_lab row matches. An rt_lab row matches a paper
    row when it has every key of it with the same value (compared as text, as the configs give them) and a column
    for the metric."""
    lines, unmatched = [], 0
    for paper_row in paper.rows:
        found = False
        for row in rows:
            if not all(key in row and str(row[key]) == str(value) for key, value in paper_row.keys.items()):
                continue
            for metric, (mean, std) in paper_row.figures.items():
                column = next((c for c in columns(metric) if c in row), None)
                if column is None:
                    continue
                found = True
                ours = float(row[column])
                lines.append({**paper_row.keys, "setting": row.get("setting", ""), "metric": column,
                              "paper": mean, "paper_std": math.nan if std is None else std,
                              "rt_lab": ours, "rt_lab_std": float(row.get(f"{column}_std", math.nan)),
                              "seeds": row.get("seeds", ""), "delta": ours - mean,
                              "within_std": within(ours, mean, std)})
        unmatched += not found
    return lines, unmatched


def markdown(paper: PaperTable, lines: Sequence[dict[str, Any]], unmatched: int) -> str:
    keys = list(dict.fromkeys(key for row in paper.rows for key in row.keys
                              if any(key in line for line in lines)))
    setting = any(line["setting"] for line in lines)
    head = [*keys, *(["setting"] if setting else []), "metric", "paper", "rt_lab", "seeds", "rt_lab - paper",
            "within paper ± std"]
    text = [f"Paper ({paper.id}): {paper.source}.", ""]

    def cells(line: dict[str, Any]) -> list[Any]:
        digits = 2 if line["metric"] in FRACTIONS else 1
        return [*(line.get(key, "") for key in keys), *([line["setting"] or "-"] if setting else []), line["metric"],
                published(line["paper"], line["paper_std"]), plus_minus(line["rt_lab"], line["rt_lab_std"], digits),
                line["seeds"], "-" if math.isnan(line["delta"]) else f"{line['delta']:+.{digits}f}",
                {True: "yes", False: "no", None: "-"}[line["within_std"]]]

    if lines:
        text += markdown_table(head, map(cells, lines))
    if any(math.isnan(line["rt_lab"]) and line["metric"] in LC_METRICS for line in lines):
        text += ["", "rt_lab's LC win rate is defined only on the 805 AlpacaEval instructions with the alpaca_eval "
                     "package (compare.length_controlled)."]
    text += ["", f"{unmatched} of the paper's {len(paper.rows)} rows are not in this sweep." if unmatched else
             f"All {len(paper.rows)} of the paper's rows are in this sweep."]
    return "\n".join(text) + "\n"


def published(mean: float, std: float) -> str:
    """A paper's figure as it prints it (43.3 ± 1.1, 2.4 ± 0.14, 42)."""
    return f"{mean:g}" + ("" if math.isnan(std) else f" ± {std:g}")
