"""Picking the epoch over a sweep (Hewitt et al.'s protocol), and win rate vs epoch (their GSM checkpoints): every
run's per-epoch outputs (`epochs/<N>/model_outputs.json`, rt_lab/generate/epochs.py) judged against its reference,
a table of win rate per setting and epoch (mean over seeds), a plot of win rate vs epoch, and the best epoch per
setting.

    python -m rt_lab.compare SWEEP_DIR --pick-epoch compare.reference.file=PATH [judge=openai ...]

The reference is the comparison's (conf/compare/): `compare.reference.file` (H's validation runs: gpt-3.5-turbo's
outputs), or the runs `compare.reference.select`/`match`/`sweep` pick, as the sweep comparison pairs a run (H's
GSM checkpoints: the same-seed LIMA IT run). A setting is model x method x dataset x the overrides that vary across
the sweep (as in the comparison table); seeds (x references) are averaged. The best epoch has the highest mean win
rate; a tie goes to the fewer epochs. Judgments are cached in each run's `epochs/judgments.jsonl`, where the run's
own judging (same judge, a reference file) already put them."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

from rt_lab.config.root import RootConfig
from rt_lab.compare import figures, plots
from rt_lab.compare.report import markdown_table, mean_and_std, spread, write_csv
from rt_lab.compare.judging import judge_epoch
from rt_lab.compare.runs import Reference, describe, find_runs, pair_runs, reference_file, varying_overrides
from rt_lab.io import atomic_write_json, atomic_write_text
from rt_lab.judges import Judge, JudgeError, build_judge
from rt_lab.layout import RunDir, SweepDir

log = logging.getLogger(__name__)

SETTING = ("model", "method", "dataset", "setting")


class RunEpochJudge:
    """Judges one training run's per-epoch outputs as they are written (rt_lab/generate/epochs.py), against
    `compare.reference.file`, as the sweep comparison judges a run: rows in `epochs/<N>/comparison/vs_<reference>.json`,
    the judgments cached in `epochs/judgments.jsonl` (which --pick-epoch then finds)."""

    def __init__(self, cfg: RootConfig, run_dir: Path) -> None:
        self.cfg, self.layout = cfg, RunDir(run_dir)
        self.reference = reference_file(cfg.compare.reference.file)
        self.judge = build_judge(cfg.judge)

    def __call__(self, epoch: int) -> dict[str, Any] | None:
        """The epoch's metrics; None, with a warning, when judging fails (a server down, a spend cap)."""
        try:
            return judge_epoch(self.judge, self.reference, self.layout.path, epoch, self.cfg,
                               self.cfg.compare.length_controlled)
        except JudgeError as err:
            log.warning("epoch %d: not judged (%s)", epoch, err)
            return None

    def metrics(self, epoch: int) -> dict[str, Any]:
        verdicts = self.layout.epoch(epoch).verdicts(self.reference.name)
        return json.loads(verdicts.read_text(encoding="utf-8"))["metrics"] if verdicts.is_file() else {}


def run_epoch_judge(cfg: RootConfig, run_dir: Path) -> RunEpochJudge | None:
    """The judge of a run's epochs: with `compare.reference.file` and a judge set, else none."""
    return RunEpochJudge(cfg, run_dir) if cfg.compare.reference.file and cfg.judge else None


def judge_runs(sweep_dir: Path, judge: Judge, cfg: RootConfig) -> tuple[list[dict[str, Any]], list[str], str]:
    """One row per (run, reference, epoch with outputs): where the run sits in the table, the epoch, its metrics;
    the lines naming runs without a (finished) reference; and what the references are, in words."""
    runs = find_runs(sweep_dir)
    with_epochs = [run for run in runs if run.layout.epochs_with_outputs()]
    pairs, notes = pair_runs(runs, cfg.compare, compared=with_epochs)
    varying = varying_overrides(with_epochs)
    rows = []
    for run, reference in pairs:
        for epoch in run.layout.epochs_with_outputs():
            metrics = judge_epoch(judge, reference, run.dir, epoch, run.cfg, cfg.compare.length_controlled)
            rows.append({**metrics, **describe(run, varying), "dir": str(run.dir), "finished": run.done,
                         "epoch": epoch})
    return rows, notes, references_in_words([reference for _, reference in pairs])


def references_in_words(references: Sequence[Reference]) -> str:
    """`gpt-3.5-turbo (path)` for a reference file; the selector (`method=it, dataset=lima`) for reference runs."""
    return ", ".join(sorted({ref.kind if ref.run else f"{ref.name} ({ref.path})" for ref in references}))


def epoch_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds (x references) of the win rate per setting and epoch (one comparison: the
    judge's standard error instead of a std)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in SETTING) + (row["epoch"],), []).append(row)
    table = []
    for key, members in groups.items():
        win_rate, win_rate_std = mean_and_std([row["win_rate"] for row in members])
        table.append({**dict(zip(SETTING + ("epoch",), key)), "seeds": len({row["dir"] for row in members}),
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


def markdown(table: Sequence[dict[str, Any]], picks: Sequence[dict[str, Any]], reference: str,
             judge: dict[str, Any], notes: Sequence[str]) -> str:
    epochs = sorted({row["epoch"] for row in table})
    cells = {tuple(row[k] for k in SETTING + ("epoch",)): row for row in table}
    chosen = {tuple(p[k] for k in SETTING): p["epoch"] for p in picks}
    head = ["model", "method", "dataset", "setting", "seeds", *[f"epoch {e}" for e in epochs], "best epoch"]

    def line(setting: tuple) -> list[Any]:
        rows = [cells.get(setting + (epoch,)) for epoch in epochs]
        return [*setting[:3], setting[3] or "-", max(row["seeds"] for row in rows if row),
                *[spread(row) if row else "" for row in rows], chosen.get(setting, "-")]

    lines = [f"Win rate (%) against {reference} per epoch; mean (± std) over seeds (x references), one "
             f"comparison: (se the judge's standard error). Judge: {json.dumps(judge)}", "",
             *markdown_table(head, map(line, sorted({key[:-1] for key in cells})))]
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def report(sweep_dir: Path, cfg: RootConfig, judge: Judge) -> Path | None:
    """Judge every run's epochs against its reference, write `comparison/epochs.csv` (per run and reference),
    `epoch_table.csv`, `epochs.md`, `picked_epochs.json` and the plot (with its numbers), print the table; None
    when no run with per-epoch outputs has a finished reference."""
    rows, notes, reference = judge_runs(sweep_dir, judge, cfg)
    if not rows:
        print(f"rt_lab compare {sweep_dir} --pick-epoch: no run with per-epoch outputs (generation.at_epochs) has a "
              "finished reference", *notes, sep="\n")
        return None
    table = epoch_table(rows)
    picks = pick(table)
    notes = notes + sorted({f"{row['run']} ({row['dir']}) has not finished: its later epochs are missing"
                            for row in rows if not row["finished"]})
    layout = SweepDir(sweep_dir)
    write_csv(layout.epochs_csv, rows)
    write_csv(layout.epoch_table_csv, table)
    atomic_write_json(layout.picked_epochs, picks)
    text = markdown(table, picks, reference, judge.identity(), notes)
    atomic_write_text(layout.epochs_md, text)
    image = plots.win_rate_vs_epoch(figures.epoch_series(table, reference), layout.win_rate_vs_epoch_plot)
    print(f"\nrt_lab compare {sweep_dir} --pick-epoch\n{text}\nbest epoch per setting:", flush=True)
    for choice in picks:
        print(f"  {' '.join(str(choice[k]) for k in SETTING if choice[k])}: epoch {choice['epoch']} "
              f"(win rate {choice['win_rate']:.1f}, {choice['seeds']} seed(s))")
    print(f"written: {layout.epochs_md}, {layout.picked_epochs}, {image}", flush=True)
    return layout.comparison
