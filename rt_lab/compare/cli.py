"""Judge every finished run of a sweep against its reference and write win-rate tables, plots and W&B tables.

The command `python -m rt_lab.compare SWEEP_DIR [overrides]`, and the Hydra callback that runs the same when a
multirun ends."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rt_lab.config.root import RootConfig
from rt_lab.compare import figures, plots, refusals
from rt_lab.compare.epoch_selection import report as epoch_report
from rt_lab.compare.judging import Comparison, compare_pair
from rt_lab.compare.paper import PaperTable, beside, paper_table
from rt_lab.compare.paper import markdown as paper_markdown
from rt_lab.compare.report import aggregate, alpaca_eval_commands, markdown, write_csv
from rt_lab.compare.runs import (Reference, Run, find_runs, missing_jobs, pair_runs, reference_sweep_dirs,
                                 varying_overrides)
from rt_lab.io import atomic_write_text
from rt_lab.judges import Judge, build_judge
from rt_lab.layout import SweepDir
from rt_lab.overrides import compose_root, override_key

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What the sections of a sweep's comparison share; each section fills in what later ones read."""

    dir: Path
    cfg: RootConfig
    runs: list[Run]
    pairs: list[tuple[Run, Reference]]
    notes: list[str]  # jobs not finished, runs without a (finished) reference
    refusal_rows: list[dict[str, Any]]
    paper: PaperTable | None
    judge: Judge | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # a row per comparison (summary.csv)
    table: list[dict[str, Any]] = field(default_factory=list)  # the rows over seeds (table.csv)
    sections: list[str] = field(default_factory=list)  # summary.md's parts
    images: list[Path] = field(default_factory=list)

    @property
    def layout(self) -> SweepDir:
        return SweepDir(self.dir)


def compare(sweep_dir: str | Path, cfg: RootConfig) -> Path | None:
    """Judge every finished run of the sweep against its reference, and add the papers' figures and numbers the
    sweep has the axes and the preset for (`SECTIONS`, in order); returns the comparison dir (None when there was
    nothing to report)."""
    sweep_dir = existing_sweep(sweep_dir)
    runs = find_runs(sweep_dir)
    pairs, unpaired = pair_runs(runs, cfg.compare)
    report = SweepReport(sweep_dir, cfg, runs, pairs, missing_jobs(sweep_dir, runs) + unpaired,
                         refusals.refusal_table(runs),
                         paper_table(cfg.compare.paper_table) if cfg.compare.get("paper_table") else None)
    if not report.pairs and not report.refusal_rows:
        print(f"rt_lab compare {sweep_dir}: no finished run with a finished reference", *report.notes, sep="\n")
        return None
    if report.pairs or figures.has_epochs(runs):
        report.judge = configured_judge(cfg, sweep_dir)
    for section in SECTIONS:
        section(report)
    text = "\n".join(report.sections)
    atomic_write_text(report.layout.summary_md, text)
    log_to_wandb(report)
    written = [*([report.layout.summary_csv] if pairs else []), *report.images]
    print(f"\nrt_lab compare {sweep_dir}\n{text}\nwritten: {report.layout.summary_md}, "
          + ", ".join(str(path) for path in written), flush=True)
    return report.layout.comparison


def epochs_section(report: SweepReport) -> None:
    """Win rate per epoch (its own files: epochs.md, the plot). First: a run's last-epoch judgments are then
    cached for the win-rate table (same outputs, same reference)."""
    if figures.has_epochs(report.runs):
        epoch_report(report.dir, report.cfg, report.judge)


def win_rates_section(report: SweepReport) -> None:
    """Every pair judged; summary.csv, table.csv, the table, win_rates.png, AlpacaEval's commands, and the rule
    ablation bars where the sweep varies the rules."""
    layout = report.layout
    if not report.pairs:
        report.sections.append("\n".join(["No win rates: no finished run with a finished reference.",
                                          *report.notes]) + "\n")
        return
    varying = varying_overrides([run for run, _ in report.pairs])
    for run, reference in report.pairs:
        # a run judged per epoch has its last epoch's judgments, of these same outputs, cached
        report.comparisons.append(compare_pair(run, reference, report.judge, layout.judgments,
                                               report.cfg.compare.length_controlled, varying,
                                               also_cached=[run.layout.epoch_judgments]))
    report.metrics = [comparison.metrics for comparison in report.comparisons]
    report.table = aggregate(report.metrics)
    write_csv(layout.summary_csv, report.metrics)
    write_csv(layout.table_csv, report.table)
    report.sections.append(markdown(report.table, report.notes, report.judge.identity(),
                                    reference_sweep_dirs(report.cfg.compare)))
    report.images += plots.win_rates(report.table, layout.win_rates_plot)
    atomic_write_text(layout.alpaca_eval_commands, alpaca_eval_commands(report.comparisons))
    if figures.has_rule_axis(report.runs):
        panels = figures.rule_ablation_series(report.table, figures.rule_sets(report.runs), report.paper)
        if panels:
            report.images.append(plots.rule_ablation(panels, layout.rule_ablation_plot))


def refusals_section(report: SweepReport) -> None:
    """Refusal rates against the refusals mixed into training (An et al. Fig. 5, Tables 15-16)."""
    if not report.refusal_rows:
        return
    write_csv(report.layout.refusals_csv, report.refusal_rows)
    report.sections.append(refusals.markdown(report.refusal_rows))
    if refusals.varies(report.refusal_rows):
        report.images.append(plots.refusal_vs_mix(figures.refusal_series(report.refusal_rows, report.paper),
                                                  report.layout.refusal_vs_mix_plot))


def paper_section(report: SweepReport) -> None:
    """The published table beside rt_lab's numbers (compare.paper_table)."""
    if not report.paper:
        return
    lines, unmatched = beside(report.paper, [*report.table, *report.refusal_rows])
    if lines:
        write_csv(report.layout.paper_csv, lines)
    report.sections.append(paper_markdown(report.paper, lines, unmatched))


SECTIONS: Sequence[Callable[[SweepReport], None]] = (epochs_section, win_rates_section, refusals_section,
                                                      paper_section)


def log_to_wandb(report: SweepReport) -> None:
    """The comparison in W&B, after its files are written: a failure there is a warning."""
    from rt_lab.compare.wandb_log import log_comparison

    cfg = report.cfg
    if not (report.pairs and cfg.get("logger") and cfg.logger.get("wandb")):
        return
    try:
        log_comparison(cfg.logger.wandb, report.dir, report.comparisons, report.metrics, report.table, report.images)
    except Exception as err:  # the network can go between a sweep's start and its end; the files above stay
        log.warning("the comparison is written, but logging it to W&B failed (%s: %s); log it later with "
                    "`python -m rt_lab.compare %s`, which judges nothing again", type(err).__name__, err,
                    report.dir)


def pick_epochs(sweep_dir: str | Path, cfg: RootConfig) -> Path | None:
    """`--pick-epoch`: the per-epoch table and the best epoch per setting only."""
    sweep_dir = existing_sweep(sweep_dir)
    return epoch_report(sweep_dir, cfg, configured_judge(cfg, sweep_dir))


def existing_sweep(sweep_dir: str | Path) -> Path:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep dir")
    return sweep_dir


def configured_judge(cfg: RootConfig, sweep_dir: Path) -> Judge:
    """The comparison's judge, its key and server checked again first (the launch may not have reached it:
    hydra.launcher.reach_servers=false, or days have passed)."""
    from rt_lab.config.validate import ConfigError
    from rt_lab.preflight import judge_problem

    if cfg.get("judge") is None:
        raise ValueError("no judge configured: set judge=hf_local (a local model) or judge=openai")
    problem = judge_problem("judge", OmegaConf.to_object(cfg.judge) if OmegaConf.is_config(cfg.judge) else cfg.judge,
                            reach_server=True)
    if problem:
        raise ConfigError(f"the comparison cannot judge: {problem}. The runs are kept: once fixed, `python -m "
                          f"rt_lab.compare {sweep_dir}` compares them")
    return build_judge(cfg.judge)


def comparison_config(sweep_dir: Path, overrides: Sequence[str]) -> DictConfig:
    """The root config with the sweep's own judge/compare/logger choices and its preset (`sweeps=`, which may set
    compare/) from its multirun.yaml, then `overrides` on top."""
    inherited = []
    saved = SweepDir(sweep_dir).multirun_config
    if saved.is_file():
        task = OmegaConf.load(saved).hydra.overrides.task
        inherited = [str(o) for o in task
                     if override_key(str(o)).replace("/", ".").split(".")[0]
                     in ("judge", "compare", "logger", "paths", "sweeps")]
    return compose_root(inherited + list(overrides))


def main(argv: Sequence[str] | None = None, prog: str = "python -m rt_lab.compare") -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. judge=openai compare.reference.file=X")
    parser.add_argument("--pick-epoch", action="store_true",
                        help="only judge each run's per-epoch outputs (generation.at_epochs) against its reference "
                             "(compare.reference) and name the best epoch per setting")
    args = parser.parse_intermixed_args(argv)  # the flag may follow the overrides
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    cfg = comparison_config(args.sweep_dir, args.overrides)
    (pick_epochs if args.pick_epoch else compare)(Path(args.sweep_dir), cfg)


class CompareCallback(Callback):
    """Hydra callback: compare the sweep when a multirun ends (not after a dry run)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.launcher.get("dry_run") or not config.compare.get("at_sweep_end", True):
            return
        compare(Path(str(config.hydra.sweep.dir)), config)

