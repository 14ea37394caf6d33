"""Sweep comparison: pair every finished run with its reference run (or a fixed reference file), judge each pair
of outputs, and report win rates as `summary.csv`, a markdown table, PNG plots and W&B tables.

    python -m rt_lab.compare SWEEP_DIR [judge=openai] [compare.reference.file=PATH] ...

runs by itself at the end of every multirun (`CompareCallback`, hydra/default.yaml). Settings: conf/compare/.
Judgments are cached in `<sweep>/comparison/judgments.jsonl`, so a rerun (more runs finished, a crash, the spend
cap) asks the judge only about pairs it has not judged."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rt_lab.io import atomic_write_json, atomic_write_text, read_records
from rt_lab.judges import build_judge, judge_pairs
from rt_lab.resolvers import rules_suffix
from rt_lab.run import DONE, JOBS
from rt_lab.winrate import summarize

log = logging.getLogger(__name__)

OUT = "comparison"
METRICS = ("win_rate", "standard_error", "discrete_win_rate", "n_wins", "n_draws", "n_losses", "n_total",
           "n_unparsable")


@dataclass
class Run:
    dir: Path
    cfg: DictConfig  # the job's composed config (.hydra/config.yaml)
    overrides: list[str]  # the job's command-line overrides (.hydra/overrides.yaml)

    @property
    def done(self) -> bool:
        return (self.dir / DONE).is_file()

    @property
    def name(self) -> str:
        return str(OmegaConf.select(self.cfg, "run.name"))

    def value(self, key: str) -> Any:
        """A config value for selectors; a config group's entry (`method`, `dataset`, ...) stands for its name."""
        node = OmegaConf.select(self.cfg, key)
        return node.get("name") if isinstance(node, DictConfig) else node

    def outputs(self) -> list[dict]:
        return [record for _, record in read_records(self.dir / "model_outputs.json")]


@dataclass
class Reference:
    name: str
    records: list[dict]
    run: Run | None = None  # None for a fixed reference file


@dataclass
class Comparison:
    run: Run
    reference: Reference
    rows: list[dict] = field(default_factory=list)  # instruction, output, reference, preference, reason
    metrics: dict[str, Any] = field(default_factory=dict)


def find_runs(sweep_dir: Path) -> list[Run]:
    """Every job dir under `sweep_dir` (a dir holding `.hydra/config.yaml`), in job-number order."""
    runs = []
    for saved in sweep_dir.rglob(".hydra/config.yaml"):
        job_dir = saved.parent.parent
        if OUT in job_dir.relative_to(sweep_dir).parts:
            continue
        overrides_file = saved.parent / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        runs.append(Run(job_dir, OmegaConf.load(saved), [str(o) for o in overrides]))
    return sorted(runs, key=lambda run: (len(run.dir.name), run.dir.name))


def missing_jobs(sweep_dir: Path, runs: Sequence[Run]) -> list[str]:
    """Lines naming every planned job (jobs.json) that has not finished."""
    path = sweep_dir / JOBS
    planned = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    finished = {run.dir.name for run in runs if run.done}
    started = {run.dir.name for run in runs}
    lines = [f"#{number} {'unfinished' if number in started else 'not started'}: {' '.join(overrides)}"
             for number, overrides in sorted(planned.items(), key=lambda item: int(item[0]))
             if number not in finished]
    lines += [f"{run.dir.name} unfinished: {' '.join(run.overrides)}" for run in runs
              if not run.done and run.dir.name not in planned]
    return lines


def flatten(mapping: Any, prefix: str = "") -> dict[str, Any]:
    """{method: it, dataset: {refusal_mix: 0}} -> {"method": "it", "dataset.refusal_mix": 0}"""
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, (dict, DictConfig)):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def matches(run: Run, select: dict[str, Any]) -> bool:
    return all(str(run.value(key)) == str(value) for key, value in select.items())


def pair_runs(runs: Sequence[Run], cfg: Any) -> tuple[list[tuple[Run, Reference]], list[str]]:
    """(run, reference) pairs of finished runs, and lines saying why other runs have none."""
    finished = [run for run in runs if run.done]
    if cfg.reference.get("file"):
        path = Path(cfg.reference.file).expanduser()
        records = [record for _, record in read_records(path)]
        name = str(records[0].get("generator", path.stem)) if records else path.stem
        return [(run, Reference(name, records)) for run in finished], []
    select = flatten(cfg.reference.select)
    if not select:
        raise ValueError("compare.reference.select is empty and compare.reference.file is unset: nothing says "
                         "which run is the reference")
    keys = list(cfg.reference.match)
    pairs, unpaired = [], []
    for run in finished:
        if matches(run, select):
            continue
        wanted = {key: run.value(key) for key in keys}
        candidates = [other for other in runs if matches(other, select)
                      and all(str(other.value(key)) == str(value) for key, value in wanted.items())]
        done = [other for other in candidates if other.done]
        if len(done) > 1:
            raise ValueError(f"{run.dir}: {len(done)} runs qualify as its reference ({[str(r.dir) for r in done]}); "
                             f"add keys to compare.reference.match (now {keys})")
        if done:
            pairs.append((run, Reference(done[0].name, done[0].outputs(), done[0])))
        else:
            state = "is unfinished" if candidates else "is not in the sweep"
            where = ", ".join(f"{key}={value}" for key, value in {**select, **wanted}.items())
            unpaired.append(f"{run.name} ({run.dir.name}): its reference ({where}) {state}")
    return pairs, unpaired


def align(run: Run, reference: Reference, source: str) -> tuple[list[str], list[str], list[str]]:
    """(instructions, outputs, references) in the run's order, matched by instruction text."""
    by_instruction = {record["instruction"]: record["output"] for record in reference.records}
    instructions, outputs, references = [], [], []
    for index, record in enumerate(run.outputs()):
        if record["instruction"] not in by_instruction:
            raise ValueError(f"{run.dir / 'model_outputs.json'} item {index}: instruction "
                             f"{record['instruction'][:60]!r} has no output in the reference {source}")
        instructions.append(record["instruction"])
        outputs.append(record["output"])
        references.append(by_instruction[record["instruction"]])
    return instructions, outputs, references


SHOWN = ("model", "method", "dataset", "trainer.seed", "rules.enabled")  # the table's own columns


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def varying_overrides(runs: Sequence[Run]) -> set[str]:
    """Override keys whose values differ between the runs (e.g. a swept refusal mix), besides the table's own
    columns; overrides every run shares say nothing about a row."""
    values: dict[str, set[str]] = {}
    for run in runs:
        given = {override_key(o): o for o in run.overrides}
        for key in {override_key(o) for other in runs for o in other.overrides}:
            values.setdefault(key, set()).add(given.get(key, ""))
    return {key for key, seen in values.items() if len(seen) > 1 and key not in SHOWN}


def describe(run: Run, varying: set[str]) -> dict[str, Any]:
    """The columns that place a run in the table: model, method (with its rules), dataset, seed, and the
    varying overrides (`setting`), which separate the groups averaged over seeds."""
    setting = [o for o in run.overrides if override_key(o) in varying]
    return {"model": run.value("model"), "method": f"{run.value('method')}{rules_suffix(run.value('rules.enabled'))}",
            "dataset": run.value("dataset"), "seed": run.value("trainer.seed"), "setting": " ".join(setting)}


def compare_pair(run: Run, reference: Reference, judge: Any, cache: Path, lc: str, varying: set[str]) -> Comparison:
    source = str(reference.run.dir) if reference.run else reference.name
    instructions, outputs, references = align(run, reference, source)
    judgments = judge_pairs(judge, instructions, outputs, references, cache)
    comparison = Comparison(run, reference)
    comparison.rows = [{"instruction": i, "output": o, "reference": r, "preference": j.value,
                        "reason": j.reason} for i, o, r, j in zip(instructions, outputs, references, judgments)]
    preferences = [j.value for j in judgments]
    comparison.metrics = {**describe(run, varying), "run": run.name, "reference": reference.name, **summarize(preferences),
                          "avg_length": statistics.fmean(len(o) for o in outputs) if outputs else math.nan}
    if lc != "off":
        comparison.metrics["lc_win_rate"] = length_controlled(instructions, outputs, references, preferences, lc)
    atomic_write_json(run.dir / OUT / f"vs_{safe_name(reference.name)}.json",
                      {"metrics": comparison.metrics, "rows": comparison.rows})
    return comparison


def length_controlled(instructions: list[str], outputs: list[str], references: list[str],
                      preferences: list[float | None], mode: str) -> float:
    """The LC win rate where it is defined (the 805 AlpacaEval instructions) and computable (the optional
    alpaca_eval package); `mode=auto` gives NaN otherwise, `mode=on` an error."""
    from rt_lab.lc_winrate import LengthControlUnavailable, length_controlled_win_rate

    try:
        return length_controlled_win_rate(instructions, outputs, references, preferences)["lc_win_rate"]
    except LengthControlUnavailable as err:
        if mode == "on":
            raise
        log.info("no length-controlled win rate: %s", err)
        return math.nan


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.[]," else "_" for c in name)


def aggregate(metrics: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds of each (model, method, dataset, setting, reference)."""
    groups: dict[tuple, list[dict]] = {}
    for row in metrics:
        key = (row["model"], row["method"], row["dataset"], row["setting"], row["reference_kind"])
        groups.setdefault(key, []).append(row)
    table = []
    for (model, method, dataset, setting, reference), rows in groups.items():
        rates = [row["win_rate"] for row in rows if not math.isnan(row["win_rate"])]
        lc = [row["lc_win_rate"] for row in rows if not math.isnan(row.get("lc_win_rate", math.nan))]
        table.append({
            "model": model, "method": method, "dataset": dataset, "setting": setting, "reference": reference,
            "seeds": len(rows), "win_rate": statistics.fmean(rates) if rates else math.nan,
            "win_rate_std": statistics.stdev(rates) if len(rates) > 1 else math.nan,
            # one seed: the judge's standard error is the only spread there is
            "standard_error": rows[0]["standard_error"] if len(rows) == 1 else math.nan,
            "lc_win_rate": statistics.fmean(lc) if lc else math.nan,
            "lc_win_rate_std": statistics.stdev(lc) if len(lc) > 1 else math.nan,
            "n_unparsable": sum(row["n_unparsable"] for row in rows),
        })
    return sorted(table, key=lambda row: (row["model"], row["dataset"], row["setting"], row["method"]))


def spread(row: dict[str, Any], metric: str = "win_rate") -> str:
    mean, std = row[metric], row[f"{metric}_std"]
    if math.isnan(mean):
        return "-"
    if not math.isnan(std):
        return f"{mean:.1f} ± {std:.1f}"
    if metric == "win_rate" and not math.isnan(row["standard_error"]):
        return f"{mean:.1f} (se {row['standard_error']:.1f})"
    return f"{mean:.1f}"


def markdown(table: Sequence[dict[str, Any]], notes: Sequence[str], judge: dict[str, Any]) -> str:
    has_lc = any(not math.isnan(row["lc_win_rate"]) for row in table)
    head = ["model", "method", "dataset", "setting", "reference", "seeds", "win rate"] + (["LC win rate"] if has_lc
                                                                                         else [])
    lines = [f"Win rate (%) of each method against its reference; mean ± std over seeds (one seed: ± the "
             f"judge's standard error). Judge: {json.dumps(judge)}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [row["model"], row["method"], row["dataset"], row["setting"] or "-", row["reference"],
                 str(row["seeds"]), spread(row)] + ([spread(row, "lc_win_rate")] if has_lc else [])
        cells[-1 - has_lc] += f" ({row['n_unparsable']} unparsable)" if row["n_unparsable"] else ""
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if notes:
        lines += ["", f"Not in this table ({len(notes)}):", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def compare(sweep_dir: str | Path, cfg: Any) -> Path | None:
    """Judge every finished run of the sweep against its reference; returns the comparison dir (None when
    nothing could be compared)."""
    from rt_lab import plots
    from rt_lab.loggers import log_comparison

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep dir")
    runs = find_runs(sweep_dir)
    notes = missing_jobs(sweep_dir, runs)
    pairs, unpaired = pair_runs(runs, cfg.compare)
    notes += unpaired
    out = sweep_dir / OUT
    if not pairs:
        print(f"rt_lab compare {sweep_dir}: no finished run with a finished reference", *notes, sep="\n")
        return None
    if cfg.get("judge") is None:
        raise ValueError("no judge configured: set judge=hf_local (a local model) or judge=openai")
    judge = build_judge(cfg.judge)
    comparisons = []
    varying = varying_overrides([run for run, _ in pairs])
    for run, reference in pairs:
        comparison = compare_pair(run, reference, judge, out / "judgments.jsonl", cfg.compare.length_controlled,
                                  varying)
        comparison.metrics["reference_kind"] = "file " + reference.name if reference.run is None else \
            ", ".join(f"{k}={v}" for k, v in flatten(cfg.compare.reference.select).items())
        comparisons.append(comparison)
    metrics = [c.metrics for c in comparisons]
    table = aggregate(metrics)
    write_csv(out / "summary.csv", metrics)
    write_csv(out / "table.csv", table)
    text = markdown(table, notes, judge.identity())
    atomic_write_text(out / "summary.md", text)
    images = plots.win_rates(table, out)
    atomic_write_text(out / "alpaca_eval_commands.sh", alpaca_eval_commands(comparisons))
    if cfg.get("logger") and cfg.logger.get("wandb"):
        log_comparison(cfg.logger.wandb, sweep_dir, comparisons, metrics, table, images)
    print(f"\nrt_lab compare {sweep_dir}\n{text}\nwritten: {out / 'summary.csv'}, {out / 'summary.md'}, "
          + ", ".join(str(image) for image in images), flush=True)
    return out


def alpaca_eval_commands(comparisons: Sequence[Comparison]) -> str:
    """The official AlpacaEval CLI on each pair (its LC win rate with its own annotator)."""
    lines = ["# The same pairs through the official AlpacaEval CLI (pip install alpaca_eval; OPENAI_API_KEY set)."]
    for c in comparisons:
        reference = c.reference.run.dir / "model_outputs.json" if c.reference.run else None
        lines.append(f"alpaca_eval --model_outputs {c.run.dir / 'model_outputs.json'}"
                     + (f" --reference_outputs {reference}" if reference else "")
                     + f" --output_path {c.run.dir / OUT / 'alpaca_eval'}")
    return "\n".join(lines) + "\n"


def comparison_config(sweep_dir: Path, overrides: Sequence[str]) -> DictConfig:
    """The root config with the sweep's own judge/compare/logger choices (from its multirun.yaml), then
    `overrides` on top."""
    from hydra import compose, initialize_config_dir

    import rt_lab  # noqa: F401  (resolvers)

    inherited = []
    saved = sweep_dir / "multirun.yaml"
    if saved.is_file():
        task = OmegaConf.load(saved).hydra.overrides.task
        inherited = [str(o) for o in task
                     if str(o).lstrip("+~").split("=")[0].replace("/", ".").split(".")[0]
                     in ("judge", "compare", "logger", "paths")]
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose("config", overrides=inherited + list(overrides))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rt_lab.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. judge=openai compare.reference.file=X")
    parser.add_argument("--pick-epoch", action="store_true",
                        help="judge each run's per-epoch outputs (generation.at_epochs) instead and name the best "
                             "epoch per setting (rt_lab/epoch_selection.py)")
    args = parser.parse_intermixed_args(argv)  # the flag may follow the overrides
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    cfg = comparison_config(args.sweep_dir, args.overrides)
    if args.pick_epoch:  # epoch-selection hook; kept apart for the rt_lab.compare package
        from rt_lab.epoch_selection import report

        report(args.sweep_dir, cfg)
        return
    compare(args.sweep_dir, cfg)


class CompareCallback(Callback):
    """Hydra callback: compare the sweep when a multirun ends (not after a dry run)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.launcher.get("dry_run") or not config.compare.get("at_sweep_end", True):
            return
        compare(Path(str(config.hydra.sweep.dir)), config)


if __name__ == "__main__":
    main()
