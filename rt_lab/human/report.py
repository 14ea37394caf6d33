"""The study's report: acceptability per method (An et al. Table 11), pairwise win / tie / loss (Fig. 8, as a
PNG), inter-rater agreement, and how often the sweep's LLM judge sides with the raters on the same pairs; CSV
files and one markdown page under `<sweep>/human/`.

Every submitted rating counts once; drafts and items hidden by moderation do not. The LLM judge's preferences
are the rows `rt_lab.compare` wrote for the run pair (`<run>/comparison/vs_<reference>.json`), used only where
the judged outputs are the rated ones."""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from rt_lab.compare import plots
from rt_lab.compare.report import markdown_table, write_csv
from rt_lab.human.agreement import fleiss_kappa, krippendorff_alpha
from rt_lab.human.store import ACCEPTABILITY, PREFERENCES, Store
from rt_lab.io import atomic_write_text
from rt_lab.layout import RunDir, SweepDir

GROUP = ("model", "dataset", "setting", "pair")  # a table row: one pair of methods on one model and dataset
ACCEPTABILITY_SCALE = ("not_acceptable", "sufficient", "excellent")  # worst to best, for the ordinal alpha
WIN_SCORE = {"a": 1.0, "tie": 0.5, "b": 0.0}


def group_of(row: sqlite3.Row | dict) -> tuple[str, ...]:
    return tuple(row[key] for key in GROUP)


def percent(count: int, total: int) -> float:
    return 100 * count / total if total else math.nan


def acceptability(ratings: Sequence[sqlite3.Row]) -> list[dict[str, Any]]:
    """Table 11: the share of each label among a method's ratings (every rater's rating of every response)."""
    cells: dict[tuple, list[str]] = defaultdict(list)
    seeds: dict[tuple, set[str]] = defaultdict(set)
    for row in ratings:
        for side in ("a", "b"):
            key = (*group_of(row), row[f"method_{side}"])
            cells[key].append(row[f"rating_{side}"])
            seeds[key].add(row["seed"])
    table = []
    for (model, dataset, setting, pair, method), labels in cells.items():
        counts = Counter(labels)
        table.append({"model": model, "dataset": dataset, "setting": setting, "pair": pair, "method": method,
                      "seeds": len(seeds[model, dataset, setting, pair, method]), "ratings": len(labels),
                      "excellent": percent(counts["excellent"], len(labels)),
                      "sufficient": percent(counts["sufficient"], len(labels)),
                      "acceptable": percent(counts["excellent"] + counts["sufficient"], len(labels)),
                      "not_acceptable": percent(counts["not_acceptable"], len(labels))})
    return table


def preferences(ratings: Sequence[sqlite3.Row]) -> list[dict[str, Any]]:
    """Fig. 8: how often each rating prefers method A, calls a tie, or prefers method B."""
    groups: dict[tuple, list[sqlite3.Row]] = defaultdict(list)
    for row in ratings:
        groups[group_of(row)].append(row)
    table = []
    for (model, dataset, setting, pair), rows in groups.items():
        counts = Counter(row["preference"] for row in rows)
        table.append({"model": model, "dataset": dataset, "setting": setting, "pair": pair,
                      "method_a": rows[0]["method_a"], "method_b": rows[0]["method_b"],
                      "items": len({row["item"] for row in rows}), "ratings": len(rows),
                      **{f"{label}_wins" if label != "tie" else "ties": percent(counts[label], len(rows))
                         for label in PREFERENCES}})
    return table


def agreement(ratings: Sequence[sqlite3.Row]) -> list[dict[str, Any]]:
    """Inter-rater agreement per pair of methods: Krippendorff's alpha over every item with two or more ratings
    (nominal for the preference, ordinal for acceptability, where each response is a unit), and Fleiss' kappa
    over the items every rater of the pair has rated."""
    table = []
    for pair in sorted({row["pair"] for row in ratings}):
        rows = [row for row in ratings if row["pair"] == pair]
        raters = {row["rater"] for row in rows}
        by_item: dict[str, list[sqlite3.Row]] = defaultdict(list)
        for row in rows:
            by_item[row["item"]].append(row)
        units = {"preference": [[row["preference"] for row in item] for item in by_item.values()],
                 "acceptability": [[row[f"rating_{side}"] for row in item] for item in by_item.values()
                                   for side in ("a", "b")]}
        for judgment, values in units.items():
            categories = PREFERENCES if judgment == "preference" else ACCEPTABILITY
            complete = [unit for unit in values if len(unit) == len(raters)]
            counts = [[unit.count(category) for category in categories] for unit in complete]
            table.append({"pair": pair, "judgment": judgment, "raters": len(raters),
                          "krippendorff_alpha": krippendorff_alpha(
                              values, None if judgment == "preference" else ACCEPTABILITY_SCALE),
                          "alpha_metric": "nominal" if judgment == "preference" else "ordinal",
                          "alpha_units": sum(len(unit) >= 2 for unit in values),
                          "fleiss_kappa": fleiss_kappa(counts) if len(raters) >= 2 else math.nan,
                          "fleiss_units": len(complete) if len(raters) >= 2 else 0})
    return table


def majority(labels: Iterable[str]) -> str | None:
    """The label most raters gave; None when two labels share the top count."""
    ranked = Counter(labels).most_common()
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


class JudgeVerdicts:
    """The LLM judge's P(method A wins) for rated items, read from the comparison rows of the item's run pair
    (either run may have been compared with the other)."""

    def __init__(self, sweep_dir: Path) -> None:
        self.sweep_dir = sweep_dir
        self.files: dict[Path, dict[str, dict] | None] = {}

    def rows(self, path: Path) -> dict[str, dict] | None:
        if path not in self.files:
            self.files[path] = None
            if path.is_file():
                try:
                    rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise ValueError(f"{path}: not a comparison file with 'rows' ({err})") from err
                for number, row in enumerate(rows):
                    missing = {"instruction", "output", "reference", "preference"} - set(row)
                    if missing:
                        raise ValueError(f"{path}: row {number} lacks {sorted(missing)}")
                self.files[path] = {row["instruction"]: row for row in rows}
        return self.files[path]

    def of(self, item: sqlite3.Row) -> tuple[str, float | None, str]:
        """(file, P(A wins) or None, state): state is "judged", "stale" (the judged outputs are not the rated
        ones), "unparsable" (the judge's answer could not be read) or "none" (no comparison of this pair)."""
        sides = ((item["dir_a"], item["run_b"], item["response_a"], item["response_b"], False),
                 (item["dir_b"], item["run_a"], item["response_b"], item["response_a"], True))
        for run_dir, other, output, reference, flipped in sides:
            path = RunDir(self.sweep_dir / run_dir).verdicts(other)
            row = (self.rows(path) or {}).get(item["instruction"])
            if row is None:
                continue
            where = str(path.relative_to(self.sweep_dir))
            if (row["output"], row["reference"]) != (output, reference):
                return where, None, "stale"
            if row["preference"] is None:
                return where, None, "unparsable"
            p_output = row["preference"] - 1  # AlpacaEval's preference: 1 + P(the run's output wins)
            return where, 1 - p_output if flipped else p_output, "judged"
        return "", None, "none"


def judge_agreement(sweep_dir: Path, ratings: Sequence[sqlite3.Row]) -> list[dict[str, Any]]:
    """Per table row: how often the judge prefers the response most raters preferred (items where most raters
    chose a side and the judge did: P(A wins) != 0.5), beside how often a rater agrees with the other raters'
    majority (the human baseline); and both win rates of method A on the judged items."""
    verdicts = JudgeVerdicts(sweep_dir)
    by_group: dict[tuple, dict[str, list[sqlite3.Row]]] = defaultdict(lambda: defaultdict(list))
    for row in ratings:
        by_group[group_of(row)][row["item"]].append(row)
    table = []
    for (model, dataset, setting, pair), items in by_group.items():
        states: Counter = Counter()
        files, agree, rater_agree, judge_wins, human_wins = set(), [], [], [], []
        for rows in items.values():
            where, p_a, state = verdicts.of(rows[0])
            states[state] += 1
            if where:
                files.add(where)
            labels = [row["preference"] for row in rows]
            for index, label in enumerate(labels):
                others = majority(labels[:index] + labels[index + 1:])
                if label != "tie" and others in ("a", "b"):
                    rater_agree.append(label == others)
            if p_a is None:
                continue
            judge_wins.append(100 * p_a)
            human_wins.extend(100 * WIN_SCORE[label] for label in labels)
            most = majority(labels)
            if most in ("a", "b") and p_a != 0.5:
                agree.append(most == ("a" if p_a > 0.5 else "b"))
        table.append({"model": model, "dataset": dataset, "setting": setting, "pair": pair,
                      "judge_files": " ".join(sorted(files)), "items": len(items), "judged": states["judged"],
                      "stale": states["stale"], "unparsable": states["unparsable"], "agreement_items": len(agree),
                      "judge_agrees_with_majority": percent(sum(agree), len(agree)),
                      "rater_agrees_with_others": percent(sum(rater_agree), len(rater_agree)),
                      "judge_win_rate_a": statistics.fmean(judge_wins) if judge_wins else math.nan,
                      "human_win_rate_a": statistics.fmean(human_wins) if human_wins else math.nan})
    return table


def preference_plot(table: Sequence[dict[str, Any]], path: Path) -> Path:
    """Fig. 8: one horizontal bar per table row, split into A wins / tie / B wins (percent of ratings)."""
    figure, axis = plots.pyplot().subplots(figsize=(8, 1.2 + 0.6 * len(table)))
    labels = [f"{row['method_a']} vs {row['method_b']}\n" + " · ".join(
        part for part in (row["model"], row["dataset"], row["setting"]) if part) for row in table]
    left = [0.0] * len(table)
    for key, name, colour in (("a_wins", "A wins", "#4c72b0"), ("ties", "tie", "#bbbbbb"),
                              ("b_wins", "B wins", "#dd8452")):
        widths = [row[key] for row in table]
        bars = axis.barh(labels, widths, left=left, color=colour, label=name)
        axis.bar_label(bars, labels=[f"{w:.0f}%" if w >= 6 else "" for w in widths], label_type="center",
                       fontsize=8)
        left = [l + w for l, w in zip(left, widths)]
    axis.invert_yaxis()
    axis.set_xlim(0, 100)
    axis.set_xlabel("ratings (%): A = the first method named, B = the second")
    axis.set_title("Human preference", fontsize=10, pad=24)  # room for the legend between title and bars
    axis.legend(ncol=3, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return plots.save_figure(figure, path)


def export_rows(ratings: Sequence[sqlite3.Row]) -> list[dict[str, Any]]:
    """Every submitted rating, with the item it rates (not the responses: those stay in the database)."""
    columns = ("rater", "item", *GROUP[:-1], "seed", "pair", "method_a", "method_b", "run_a", "run_b",
               "a_on_left", "rating_a", "rating_b", "preference", "submitted_at", "updated_at", "revisions",
               "instruction")
    return [{column: row[column] for column in columns} for row in ratings]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.3f}"
    return str(value) if value not in ("", None) else "-"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> list[str]:
    """A markdown table of `rows`: a (key, header) per column."""
    return markdown_table([head for _, head in columns], ([_cell(row[key]) for key, _ in columns] for row in rows))


def write_report(sweep_dir: Path, db: Path | None = None) -> str:
    """Write every table and the plot under `<sweep>/human/`; returns the markdown page."""
    layout = SweepDir(sweep_dir)
    path = Path(db) if db else layout.human_ratings
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ratings database; start the study with `python -m rt_lab.human "
                                f"serve {sweep_dir} --pairs A:B`")
    store = Store(path)
    ratings = store.submitted()
    if not ratings:
        raise ValueError(f"{path}: no submitted ratings yet")
    items = store.items()
    visible = [item for item in items if item["moderation"] != "hide"]
    done = Counter(row["rater"] for row in ratings)
    accepted, preferred = acceptability(ratings), preferences(ratings)
    agreed, judged = agreement(ratings), judge_agreement(sweep_dir, ratings)
    for path, rows in ((layout.human_ratings_csv, export_rows(ratings)), (layout.human_acceptability_csv, accepted),
                       (layout.human_preferences_csv, preferred), (layout.human_agreement_csv, agreed),
                       (layout.human_judge_agreement_csv, judged)):
        write_csv(path, rows, for_spreadsheets=True)  # instructions and setting names come from others
    plot = preference_plot(preferred, layout.human_preferences_plot)
    where = [("model", "model"), ("dataset", "dataset"), ("setting", "setting")]
    lines = [f"# Human evaluation of {sweep_dir}", "",
             f"{len(ratings)} ratings of {len({row['item'] for row in ratings})} items by {len(done)} raters "
             f"({path}). Items: {len(visible)} shown, {len(items) - len(visible)} hidden by moderation, "
             f"{sum(item['moderation'] == 'flag' for item in visible)} shown under a warning.", "",
             "Raters: " + ", ".join(f"{rater.name} {done[rater.name]}/{len(visible)}" for rater in store.raters()),
             "", "## Acceptability (% of ratings; An et al. Table 11)", "",
             *table(accepted, [*where, ("pair", "pair"), ("method", "method"), ("seeds", "seeds"),
                               ("ratings", "ratings"), ("excellent", "Acceptable (Excellent)"),
                               ("sufficient", "Acceptable (Sufficient)"), ("acceptable", "Acceptable"),
                               ("not_acceptable", "Not acceptable")]),
             "", f"## Preference (% of ratings; An et al. Fig. 8: {plot.name})", "",
             *table(preferred, [*where, ("method_a", "A"), ("method_b", "B"), ("items", "items"),
                                ("ratings", "ratings"), ("a_wins", "A wins"), ("ties", "tie"),
                                ("b_wins", "B wins")]),
             "", "## Inter-rater agreement", "",
             "Krippendorff's alpha over every item rated at least twice (preference: nominal over A / tie / B; "
             "acceptability: ordinal, each response a unit); Fleiss' kappa over the items every rater of the "
             "pair rated.", "",
             *table(agreed, [("pair", "pair"), ("judgment", "judgment"), ("raters", "raters"),
                             ("krippendorff_alpha", "Krippendorff's alpha"), ("alpha_metric", "metric"),
                             ("alpha_units", "units"), ("fleiss_kappa", "Fleiss' kappa"),
                             ("fleiss_units", "units (all raters)")]),
             "", "## The LLM judge against the raters", "",
             "The judge's preference is read from the sweep comparison's rows for the same run pair "
             "(`python -m rt_lab.compare`); stale = the judged outputs differ from the rated ones. Agreement: "
             "items where most raters preferred one response and the judge preferred one; beside it, how often "
             "one rater agrees with the other raters' majority. Win rates of A (ties count half) on the judged "
             "items.", "",
             *table(judged, [*where, ("pair", "pair"), ("items", "items"), ("judged", "judged"),
                             ("stale", "stale"), ("agreement_items", "compared"),
                             ("judge_agrees_with_majority", "judge = majority (%)"),
                             ("rater_agrees_with_others", "rater = others (%)"),
                             ("judge_win_rate_a", "judge: A win rate"),
                             ("human_win_rate_a", "raters: A win rate")])]
    text = "\n".join(lines) + "\n"
    atomic_write_text(layout.human_report_md, text)
    return text
