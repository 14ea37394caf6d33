"""Every file and folder name rt_lab reads or writes in a run dir and a sweep dir, in one place.

Standard library only: Hydra's plugin scan imports the launchers, and `python -m rt_lab.compare --help` the
comparison, and neither should pay for torch just to learn a file name.

A run dir (one job, `paths.run_dir`):

    .hydra/config.yaml, .hydra/overrides.yaml   the job's composed config and command-line overrides (Hydra)
    checkpoints/last.ckpt        resumable training state
    model/                       the exported trained model (merge_bf16 keeps the adapter in model/adapter/)
    trained.done                 training and export finished
    generations.jsonl            answers appended per batch (generation resumes from them)
    model_outputs.json           the answers, AlpacaEval format; written last, atomically
    eval/<name>.json, eval/<name>/   an evaluation's metrics, and its own working files
    epochs/<N>/                  generation.at_epochs: epoch N's generations.jsonl, model_outputs.json, comparison/
    epochs/summary.json, epochs/judgments.jsonl   every listed epoch; the judge cache of the epochs' comparisons
    comparison/vs_<reference>.json   the run judged against a reference (rt_lab.compare)
    csv/metrics.csv, wandb_run_id    the loggers' metrics; the run's W&B id, drawn once
    run.done                     the whole job finished: a resumed sweep does not launch it again

A sweep dir holds one run dir per job (`<job number>/`), `multirun.yaml` (Hydra's record of the launch),
`jobs.json` (every job the launcher planned) and `comparison/` (rt_lab.compare's judgments, tables and plots)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

COMPARISON = "comparison"
MERGED_ADAPTER = "adapter"  # inside an exported model folder: merge_bf16's trained adapter
_HYDRA_CONFIG = ".hydra/config.yaml"


def comparison_name(reference: str) -> str:
    """`vs_<reference>`: the stem of a run's files, and of its W&B keys, about its comparison with `reference`
    (made safe for a file name: a reference from another sweep is named `<run>@<sweep>/<job>`)."""
    return "vs_" + "".join(c if c.isalnum() or c in "-_.[]," else "_" for c in reference)


@dataclass(frozen=True)
class RunDir:
    """A run dir, or one epoch's part of it (`epoch(n)`: the same names for what an epoch has)."""

    path: Path

    @property
    def hydra_config(self) -> Path:
        return self.path / _HYDRA_CONFIG

    @property
    def hydra_overrides(self) -> Path:
        return self.path / ".hydra" / "overrides.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def checkpoint(self) -> Path:
        """The checkpoint a rerun resumes from (Lightning's `save_last` name in `checkpoints`)."""
        return self.checkpoints / "last.ckpt"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def trained_marker(self) -> Path:
        return self.path / "trained.done"

    @property
    def generations(self) -> Path:
        return self.path / "generations.jsonl"

    @property
    def outputs(self) -> Path:
        return self.path / "model_outputs.json"

    def eval_metrics(self, name: str) -> Path:
        return self.path / "eval" / f"{name}.json"

    def eval_dir(self, name: str) -> Path:
        return self.path / "eval" / name

    @property
    def comparison(self) -> Path:
        return self.path / COMPARISON

    def verdicts(self, reference: str) -> Path:
        """The rows and metrics of this run judged against `reference` (a reference name, not yet made safe)."""
        return self.comparison / f"{comparison_name(reference)}.json"

    def alpaca_eval_output(self, reference: str) -> Path:
        return self.comparison / f"alpaca_eval_{comparison_name(reference)}"

    @property
    def epochs(self) -> Path:
        return self.path / "epochs"

    def epoch(self, number: int) -> RunDir:
        return RunDir(self.epochs / str(number))

    def epochs_with_outputs(self) -> list[int]:
        """The epochs whose outputs are written, in order."""
        found = [int(d.name) for d in self.epochs.iterdir() if d.name.isdigit()] if self.epochs.is_dir() else []
        return sorted(number for number in found if self.epoch(number).outputs.is_file())

    @property
    def epoch_summary(self) -> Path:
        return self.epochs / "summary.json"

    @property
    def epoch_judgments(self) -> Path:
        return self.epochs / "judgments.jsonl"

    @property
    def csv_metrics(self) -> Path:
        """The CSV logger's metrics (conf/logger/csv.yaml names the folder, Lightning's CSVLogger the file)."""
        return self.path / "csv" / "metrics.csv"

    @property
    def wandb_run_id(self) -> Path:
        return self.path / "wandb_run_id"

    @property
    def done_marker(self) -> Path:
        return self.path / "run.done"


@dataclass(frozen=True)
class SweepDir:
    """A sweep (multirun) dir: its jobs' run dirs, the launcher's plan, and the comparison's outputs."""

    path: Path

    def run_dirs(self) -> list[RunDir]:
        """Every job dir (one holding `.hydra/config.yaml`) outside `comparison/`, in job-number order."""
        found = [saved.parents[1] for saved in self.path.rglob(_HYDRA_CONFIG)]
        jobs = [job for job in found if COMPARISON not in job.relative_to(self.path).parts]
        return [RunDir(job) for job in sorted(jobs, key=lambda job: (len(job.name), job.name))]

    @property
    def jobs(self) -> Path:
        """Every job the launcher planned: {number: overrides}."""
        return self.path / "jobs.json"

    @property
    def multirun_config(self) -> Path:
        return self.path / "multirun.yaml"

    @property
    def comparison(self) -> Path:
        return self.path / COMPARISON

    @property
    def judgments(self) -> Path:
        """The judge cache of the sweep's comparisons."""
        return self.comparison / "judgments.jsonl"

    @property
    def summary_csv(self) -> Path:
        return self.comparison / "summary.csv"

    @property
    def table_csv(self) -> Path:
        return self.comparison / "table.csv"

    @property
    def summary_md(self) -> Path:
        return self.comparison / "summary.md"

    @property
    def win_rates_plot(self) -> Path:
        return self.comparison / "win_rates.png"

    @property
    def alpaca_eval_commands(self) -> Path:
        return self.comparison / "alpaca_eval_commands.sh"

    @property
    def epochs_csv(self) -> Path:
        return self.comparison / "epochs.csv"

    @property
    def epoch_table_csv(self) -> Path:
        return self.comparison / "epoch_table.csv"

    @property
    def epochs_md(self) -> Path:
        return self.comparison / "epochs.md"

    @property
    def picked_epochs(self) -> Path:
        return self.comparison / "picked_epochs.json"

    @property
    def win_rate_vs_epoch_plot(self) -> Path:
        return self.comparison / "win_rate_vs_epoch.png"

    @property
    def wandb_run_id(self) -> Path:
        """The W&B id of the sweep's summary run."""
        return self.comparison / "wandb_run_id"
