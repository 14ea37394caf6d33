"""Every file and folder name rt_lab reads or writes in a run dir and a sweep dir, in one place.

Standard library only: Hydra's plugin scan imports the launchers, and `python -m rt_lab.compare --help` the
comparison, and neither should pay for torch just to learn a file name.

A run dir (one job, `paths.run_dir`):

    .hydra/config.yaml, .hydra/overrides.yaml   the job's composed config and command-line overrides (Hydra)
    checkpoints/last.ckpt        resumable training state
    checkpoints/.last.ckpt.*     a save being swapped in, and what a crash mid-swap leaves (rt_lab/train/preemption.py)
    model/                       the exported trained model (merge_bf16 keeps the adapter in model/adapter/)
    trained.done                 training and export finished
    generations.jsonl            answers appended as they finish (generation resumes from them)
    model_outputs.json           the answers, AlpacaEval format; written last, atomically
    eval/<name>.json, eval/<name>/   an evaluation's metrics, and its own working files
    epochs/<N>/                  generation.at_epochs: epoch N's generations.jsonl, model_outputs.json, comparison/
    epochs/summary.json, epochs/judgments.jsonl   every listed epoch; the judge cache of the epochs' comparisons
    comparison/vs_<reference>.json   the run judged against a reference (rt_lab.compare)
    analysis/<name>/             an analysis of the run (rt_lab.analysis), e.g. analysis/similarity_gsm8k/
    csv/metrics.csv, wandb_run_id    the loggers' metrics; the run's W&B id, drawn once
    run.done                     the whole job finished: a resumed sweep does not launch it again

A sweep dir holds one run dir per job (`<job number>/`), `multirun.yaml` (Hydra's record of the launch),
`jobs.json` (every job the launcher planned), `comparison/` (rt_lab.compare's judgments, tables and plots) and
`human/` (rt_lab.human: the human study's ratings database and its report).

A refine dir (`paths.refine_dir`, shared by every run that refines training data, rt_lab.data.refine):

    rewrites.jsonl               every rewrite asked for, keyed by refiner, prompt and response (the cache)
    <dataset>-<hash>.jsonl       one refined training set (`messages` records), reusable with dataset.file=
    <dataset>-<hash>.stats.json  what its refinement rewrote, kept and asked for
    <dataset>-<hash>.lock        held while a job refines that set, so a concurrent job waits, then asks nothing"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPARISON = "comparison"
HUMAN = "human"
MERGED_ADAPTER = "adapter"  # inside an exported model folder: merge_bf16's trained adapter
_HYDRA_CONFIG = ".hydra/config.yaml"


class At:
    """A fixed place under a dir: `outputs = At("model_outputs.json")` makes `RunDir(p).outputs` the Path
    `p / "model_outputs.json"`."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, instance: Any, owner: type) -> Any:
        return self if instance is None else instance.path.joinpath(*self.parts)


def comparison_name(reference: str) -> str:
    """`vs_<reference>`: the stem of a run's files, and of its W&B keys, about its comparison with `reference`
    (made safe for a file name: a reference from another sweep is named `<run>@<sweep>/<job>`)."""
    return "vs_" + "".join(c if c.isalnum() or c in "-_.[]," else "_" for c in reference)


@dataclass(frozen=True)
class RunDir:
    """A run dir, or one epoch's part of it (`epoch(n)`: the same names for what an epoch has)."""

    path: Path

    hydra_config = At(_HYDRA_CONFIG)
    hydra_overrides = At(".hydra", "overrides.yaml")
    checkpoints = At("checkpoints")
    checkpoint = At("checkpoints", "last.ckpt")  # what a rerun resumes from (Lightning's `save_last` name)
    model = At("model")
    trained_marker = At("trained.done")
    generations = At("generations.jsonl")
    outputs = At("model_outputs.json")
    comparison = At(COMPARISON)
    epochs = At("epochs")
    epoch_summary = At("epochs", "summary.json")
    epoch_judgments = At("epochs", "judgments.jsonl")
    csv_metrics = At("csv", "metrics.csv")  # conf/logger/csv.yaml names the folder, Lightning's CSVLogger the file
    wandb_run_id = At("wandb_run_id")
    done_marker = At("run.done")

    def eval_metrics(self, name: str) -> Path:
        return self.path / "eval" / f"{name}.json"

    def eval_dir(self, name: str) -> Path:
        return self.path / "eval" / name

    def analysis_dir(self, name: str) -> Path:
        return self.path / "analysis" / name

    def verdicts(self, reference: str) -> Path:
        """The rows and metrics of this run judged against `reference` (a reference name, not yet made safe)."""
        return self.comparison / f"{comparison_name(reference)}.json"

    def alpaca_eval_output(self, reference: str) -> Path:
        return self.comparison / f"alpaca_eval_{comparison_name(reference)}"

    def epoch(self, number: int) -> RunDir:
        return RunDir(self.epochs / str(number))

    def epochs_with_outputs(self) -> list[int]:
        """The epochs whose outputs are written, in order."""
        found = [int(d.name) for d in self.epochs.iterdir() if d.name.isdigit()] if self.epochs.is_dir() else []
        return sorted(number for number in found if self.epoch(number).outputs.is_file())


@dataclass(frozen=True)
class SweepDir:
    """A sweep (multirun) dir: its jobs' run dirs, the launcher's plan, and the comparison's outputs."""

    path: Path

    jobs = At("jobs.json")  # every job the launcher planned: {number: overrides}
    multirun_config = At("multirun.yaml")
    comparison = At(COMPARISON)
    judgments = At(COMPARISON, "judgments.jsonl")  # the judge cache of the sweep's comparisons
    summary_csv = At(COMPARISON, "summary.csv")
    table_csv = At(COMPARISON, "table.csv")
    summary_md = At(COMPARISON, "summary.md")
    win_rates_plot = At(COMPARISON, "win_rates.png")
    alpaca_eval_commands = At(COMPARISON, "alpaca_eval_commands.sh")
    epochs_csv = At(COMPARISON, "epochs.csv")
    epoch_table_csv = At(COMPARISON, "epoch_table.csv")
    epochs_md = At(COMPARISON, "epochs.md")
    picked_epochs = At(COMPARISON, "picked_epochs.json")
    win_rate_vs_epoch_plot = At(COMPARISON, "win_rate_vs_epoch.png")  # each paper figure: its numbers in a .json
    rule_ablation_plot = At(COMPARISON, "rule_ablation.png")
    refusals_csv = At(COMPARISON, "refusals.csv")
    refusal_vs_mix_plot = At(COMPARISON, "refusal_vs_mix.png")
    paper_csv = At(COMPARISON, "paper.csv")  # the paper's figures beside rt_lab's (compare.paper_table)
    wandb_run_id = At(COMPARISON, "wandb_run_id")  # the W&B id of the sweep's summary run
    human = At(HUMAN)
    human_ratings = At(HUMAN, "ratings.sqlite")  # items, raters and every rating, committed as it is given
    human_report_md = At(HUMAN, "report.md")
    human_ratings_csv = At(HUMAN, "ratings.csv")  # every submitted rating, one row each
    human_acceptability_csv = At(HUMAN, "acceptability.csv")
    human_preferences_csv = At(HUMAN, "preferences.csv")
    human_preferences_plot = At(HUMAN, "preferences.png")
    human_agreement_csv = At(HUMAN, "agreement.csv")
    human_judge_agreement_csv = At(HUMAN, "judge_agreement.csv")

    def run_dirs(self) -> list[RunDir]:
        """Every job dir (one holding `.hydra/config.yaml`) outside `comparison/`, in job-number order."""
        found = [saved.parents[1] for saved in self.path.rglob(_HYDRA_CONFIG)]
        jobs = [job for job in found if COMPARISON not in job.relative_to(self.path).parts]
        return [RunDir(job) for job in sorted(jobs, key=lambda job: (len(job.name), job.name))]


@dataclass(frozen=True)
class RefineDir:
    """The shared dir of refined training sets and their rewrite cache."""

    path: Path

    rewrites = At("rewrites.jsonl")

    def refined_set(self, stem: str) -> Path:
        return self.path / f"{stem}.jsonl"

    def stats(self, stem: str) -> Path:
        return self.path / f"{stem}.stats.json"

    def lock(self, stem: str) -> Path:
        return self.path / f"{stem}.lock"
