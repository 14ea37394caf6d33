"""Picking the epoch over a sweep (Hewitt et al.'s protocol): every run's per-epoch outputs
(`epochs/<N>/model_outputs.json`, rt_lab/generate/epochs.py) judged against `compare.reference.file`, a table of win rate
per setting and epoch (mean over seeds), a plot of win rate vs epoch, and the best epoch per setting.

    python -m rt_lab.compare SWEEP_DIR --pick-epoch compare.reference.file=PATH [judge=openai ...]

A setting is model x method x dataset x the overrides that vary across the sweep (as in the comparison table);
seeds are averaged. The best epoch has the highest mean win rate; a tie goes to the fewer epochs. Judgments are
cached in each run's `epochs/judgments.jsonl`, where the run's own judging (same judge) already put them."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

from rt_lab.compare import plots
from rt_lab.compare.report import mean_and_std, spread, write_csv
from rt_lab.compare.judging import judge_epoch
from rt_lab.compare.runs import Reference, describe, find_runs, reference_file, varying_overrides
from rt_lab.io import atomic_write_json, atomic_write_text
from rt_lab.judges import Judge
from rt_lab.layout import SweepDir

log = logging.getLogger(__name__)

SETTING = ("model", "method", "dataset", "setting")


def judge_runs(sweep_dir: Path, reference: Reference, judge: Judge, cfg: Any) -> list[dict[str, Any]]:
    """One row per (run, epoch with outputs): where the run sits in the table, the epoch, its metrics."""
    runs = [(run, epochs) for run in find_runs(sweep_dir) if (epochs := run.layout.epochs_with_outputs())]
    varying = varying_overrides([run for run, _ in runs])
    rows = []
    for run, epochs in runs:
        for epoch in epochs:
            metrics = judge_epoch(judge, reference, run.dir, epoch, run.cfg, cfg.compare.length_controlled)
            rows.append({**metrics, **describe(run, varying), "dir": str(run.dir), "finished": run.done,
                         "epoch": epoch})
    return rows


def epoch_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of the win rate per setting and epoch (one seed: the judge's standard
    error instead of a std)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in SETTING) + (row["epoch"],), []).append(row)
    table = []
    for key, members in groups.items():
        win_rate, win_rate_std = mean_and_std([row["win_rate"] for row in members])
        table.append({**dict(zip(SETTING + ("epoch",), key)), "seeds": len(members),
                      "win_rate": win_rate, "win_rate_std": win_rate_std,
                      "standard_error": members[0]["standard_error"] if len(members) == 1 else math.nan,
                      "n_unparsable": sum(row["n_unparsable"] for row in members)})
    return sorted(table, key=lambda row: tuple(row[key] for key in SETTING + ("epoch",)))


def pick(table: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best epoch of each setting: highest mean win rate, the fewer epochs on a tie."""
    best: dict[tuple, dict] = {}
    for row in table:
        if math.isnan(row["win_rate"]):
            continue
        key = tuple(row[k] for k in SETTING)
        held = best.get(key)
        if held is None or (row["win_rate"], -row["epoch"]) > (held["win_rate"], -held["epoch"]):
            best[key] = row
    return [{**dict(zip(SETTING, key)), "epoch": row["epoch"], "win_rate": row["win_rate"], "seeds": row["seeds"]}
            for key, row in sorted(best.items())]


def markdown(table: Sequence[dict[str, Any]], picks: Sequence[dict[str, Any]], reference: Reference,
             judge: dict[str, Any], notes: Sequence[str]) -> str:
    epochs = sorted({row["epoch"] for row in table})
    cells = {tuple(row[k] for k in SETTING + ("epoch",)): row for row in table}
    chosen = {tuple(p[k] for k in SETTING): p["epoch"] for p in picks}
    head = ["model", "method", "dataset", "setting", "seeds", *[f"epoch {e}" for e in epochs], "best epoch"]
    lines = [f"Win rate (%) against {reference.name} ({reference.path}) per epoch; mean (± std) over seeds, one "
             f"seed: (se the judge's standard error). Judge: {json.dumps(judge)}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting in sorted({key[:-1] for key in cells}):
        rows = [cells.get(setting + (epoch,)) for epoch in epochs]
        seeds = max(row["seeds"] for row in rows if row)
        lines.append("| " + " | ".join([*map(str, setting[:3]), setting[3] or "-", str(seeds),
                                        *[spread(row) if row else "" for row in rows],
                                        str(chosen.get(setting, "-"))]) + " |")
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def report(sweep_dir: Path, cfg: Any, judge: Judge) -> Path | None:
    """Judge every run's epochs, write `comparison/epochs.csv` (per run), `epoch_table.csv`, `epochs.md`,
    `picked_epochs.json` and the plot, print the table; None when no run has per-epoch outputs."""
    file = cfg.compare.reference.get("file")
    if not file:
        raise ValueError("--pick-epoch judges each epoch against a fixed reference: set compare.reference.file "
                         "(Hewitt et al.: ${paths.data_dir}/hewitt/val_eval/val-gpt3.5-2.json)")
    reference = reference_file(file)
    rows = judge_runs(sweep_dir, reference, judge, cfg)
    if not rows:
        print(f"rt_lab compare {sweep_dir} --pick-epoch: no run has per-epoch outputs (generation.at_epochs)")
        return None
    table = epoch_table(rows)
    picks = pick(table)
    notes = sorted({f"{row['run']} ({row['dir']}) has not finished: its later epochs are missing" for row in rows
                    if not row["finished"]})
    layout = SweepDir(sweep_dir)
    write_csv(layout.epochs_csv, rows)
    write_csv(layout.epoch_table_csv, table)
    atomic_write_json(layout.picked_epochs, picks)
    text = markdown(table, picks, reference, judge.identity(), notes)
    atomic_write_text(layout.epochs_md, text)
    image = plots.win_rate_vs_epoch(table, layout.win_rate_vs_epoch_plot)
    print(f"\nrt_lab compare {sweep_dir} --pick-epoch\n{text}\nbest epoch per setting:", flush=True)
    for choice in picks:
        print(f"  {' '.join(str(choice[k]) for k in SETTING if choice[k])}: epoch {choice['epoch']} "
              f"(win rate {choice['win_rate']:.1f}, {choice['seeds']} seed(s))")
    print(f"written: {layout.epochs_md}, {layout.picked_epochs}, {image}", flush=True)
    return layout.comparison
