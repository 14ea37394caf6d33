"""Judge every finished run of a sweep against its reference and write win-rate tables, plots and W&B tables.

The command `python -m rt_lab.compare SWEEP_DIR [overrides]`, and the Hydra callback that runs the same when a
multirun ends."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rt_lab.compare import figures, plots, refusals
from rt_lab.compare.epoch_selection import report as epoch_report
from rt_lab.compare.judging import compare_pair
from rt_lab.compare.paper import beside, paper_table
from rt_lab.compare.paper import markdown as paper_markdown
from rt_lab.compare.report import aggregate, alpaca_eval_commands, markdown, write_csv
from rt_lab.compare.runs import find_runs, missing_jobs, pair_runs, reference_sweep_dirs, varying_overrides
from rt_lab.io import atomic_write_text
from rt_lab.judges import Judge, build_judge
from rt_lab.layout import SweepDir
from rt_lab.overrides import compose_root, override_key

log = logging.getLogger(__name__)


def compare(sweep_dir: str | Path, cfg: Any) -> Path | None:
    """Judge every finished run of the sweep against its reference, and add the papers' figures and numbers the
    sweep has the axes and the preset for; returns the comparison dir (None when there was nothing to report)."""
    from rt_lab.compare.wandb_log import log_comparison

    sweep_dir = existing_sweep(sweep_dir)
    runs = find_runs(sweep_dir)
    paper = paper_table(cfg.compare.paper_table) if cfg.compare.get("paper_table") else None
    refusal_rows = refusals.refusal_table(runs)
    notes = missing_jobs(sweep_dir, runs)
    pairs, unpaired = pair_runs(runs, cfg.compare)
    notes += unpaired
    if not pairs and not refusal_rows:
        print(f"rt_lab compare {sweep_dir}: no finished run with a finished reference", *notes, sep="\n")
        return None
    layout = SweepDir(sweep_dir)
    per_epoch = figures.has_epochs(runs)
    judge = configured_judge(cfg) if pairs or per_epoch else None
    if per_epoch:
        # first: a run's last-epoch judgments are then cached for the table below (same outputs, same reference)
        epoch_report(sweep_dir, cfg, judge)
    sections, images, table = [], [], []
    if pairs:
        comparisons = []
        varying = varying_overrides([run for run, _ in pairs])
        for run, reference in pairs:
            # a run judged per epoch has its last epoch's judgments, of these same outputs, cached
            comparisons.append(compare_pair(run, reference, judge, layout.judgments, cfg.compare.length_controlled,
                                            varying, also_cached=[run.layout.epoch_judgments]))
        metrics = [c.metrics for c in comparisons]
        table = aggregate(metrics)
        write_csv(layout.summary_csv, metrics)
        write_csv(layout.table_csv, table)
        sections.append(markdown(table, notes, judge.identity(), reference_sweep_dirs(cfg.compare)))
        images += plots.win_rates(table, layout.win_rates_plot)
        atomic_write_text(layout.alpaca_eval_commands, alpaca_eval_commands(comparisons))
        if figures.has_rule_axis(runs):
            panels = figures.rule_ablation_series(table, figures.rule_sets(runs), paper)
            if panels:
                images.append(plots.rule_ablation(panels, layout.rule_ablation_plot))
    else:
        sections.append("\n".join(["No win rates: no finished run with a finished reference.", *notes]) + "\n")
    if refusal_rows:
        write_csv(layout.refusals_csv, refusal_rows)
        sections.append(refusals.markdown(refusal_rows))
        if refusals.varies(refusal_rows):
            images.append(plots.refusal_vs_mix(figures.refusal_series(refusal_rows, paper),
                                               layout.refusal_vs_mix_plot))
    if paper:
        lines, unmatched = beside(paper, [*table, *refusal_rows])
        if lines:
            write_csv(layout.paper_csv, lines)
        sections.append(paper_markdown(paper, lines, unmatched))
    text = "\n".join(sections)
    atomic_write_text(layout.summary_md, text)
    if pairs and cfg.get("logger") and cfg.logger.get("wandb"):
        try:
            log_comparison(cfg.logger.wandb, sweep_dir, comparisons, metrics, table, images)
        except Exception as err:  # the network can go between a sweep's start and its end; the files above stay
            log.warning("the comparison is written, but logging it to W&B failed (%s: %s); log it later with "
                        "`python -m rt_lab.compare %s`, which judges nothing again", type(err).__name__, err,
                        sweep_dir)
    print(f"\nrt_lab compare {sweep_dir}\n{text}\nwritten: {layout.summary_md}, "
          + ", ".join(str(path) for path in [*([layout.summary_csv] if pairs else []), *images]), flush=True)
    return layout.comparison


def pick_epochs(sweep_dir: str | Path, cfg: Any) -> Path | None:
    """`--pick-epoch`: the per-epoch table and the best epoch per setting only."""
    return epoch_report(existing_sweep(sweep_dir), cfg, configured_judge(cfg))


def existing_sweep(sweep_dir: str | Path) -> Path:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep dir")
    return sweep_dir


def configured_judge(cfg: Any) -> Judge:
    if cfg.get("judge") is None:
        raise ValueError("no judge configured: set judge=hf_local (a local model) or judge=openai")
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rt_lab.compare", description=__doc__.split("\n\n")[0])
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

