"""Experiment loggers. W&B runs in the mode rt_lab.wandb_mode decides (offline without credentials), keeps one run
id per output dir (so a requeued job continues its run), and is finished at the end of every job."""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from rt_lab.layout import RunDir
from rt_lab.wandb_mode import wandb_mode


def wandb_logger(save_dir: str, mode: str = "auto", **kwargs: Any) -> Any:
    """A Lightning WandbLogger whose run gets the process's W&B mode (rt_lab.wandb_mode) as wandb.init's `mode`."""
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(save_dir=save_dir, mode=wandb_mode(mode),
                       id=wandb_run_id(RunDir(Path(save_dir)).wandb_run_id), resume="allow", **kwargs)


def wandb_run_id(id_file: Path) -> str:
    """The W&B run id kept in `id_file`, drawn once: a requeued job or a later comparison continues the same
    run."""
    id_file.parent.mkdir(parents=True, exist_ok=True)
    if not id_file.is_file():
        id_file.write_text(uuid.uuid4().hex[:12])
    return id_file.read_text().strip()


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger deletes an existing metrics.csv when a run starts again in the same dir; this one
    keeps it and appends, and `forget_after(step)` drops rows a resumed run is about to log again."""

    @property
    def experiment(self) -> Any:
        if self._experiment is None and rank_zero_only.rank == 0:
            path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
            kept = path.read_bytes() if path.is_file() else None
            writer = super().experiment
            if kept is not None:  # put back what the base writer deleted, and keep its columns
                path.write_bytes(kept)
                writer.metrics_keys = next(csv.reader(io.StringIO(kept.decode("utf-8"))), [])
            return writer
        return super().experiment

    def forget_after(self, step: int) -> None:
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        if not path.is_file():
            return
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields, rows = reader.fieldnames or [], [row for row in reader if int(row["step"]) < step]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


class TrimLogsOnResume(L.Callback):
    """When training (re)starts at some global step, drop CSV rows from a previous attempt at later steps."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, ResumableCSVLogger):
                    logger.forget_after(trainer.global_step)


def finish_wandb() -> None:
    """Close the job's W&B run so the next job of a one-process multirun gets its own."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()

