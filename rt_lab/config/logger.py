"""`logger/`: the experiment loggers (rt_lab/loggers.py): wandb, csv, both or none."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rt_lab.config.checks import one_of


@dataclass
class WandbConfig:
    _target_: str = "rt_lab.loggers.wandb_logger"
    save_dir: Optional[str] = "${paths.run_dir}"
    """The run dir: its wandb/ holds the run's files."""
    mode: str = "auto"
    """auto (offline without credentials or when the host does not answer; a WANDB_MODE you set wins:
    rt_lab/wandb_mode.py), online, offline or disabled."""
    project: str = "rt_lab"
    entity: Optional[str] = None
    group: str = "${rt_lab.sweep_name:}"
    """The sweep (or run) dir's name."""
    name: str = "${rt_lab.job_overrides:}"
    """The command-line overrides."""
    job_type: str = "train"
    tags: list[str] = field(default_factory=lambda: ["${method.name}", "${dataset.name}", "${model.name}"])

    def check(self) -> None:
        one_of("mode", self.mode, ("auto", "online", "offline", "disabled"))


@dataclass
class CSVLoggerConfig:
    _target_: str = "rt_lab.loggers.ResumableCSVLogger"
    save_dir: Optional[str] = "${paths.run_dir}"
    name: str = "csv"
    version: str = ""
    """metrics.csv lands in <run dir>/csv/."""


@dataclass
class LoggerConfig:
    wandb: Optional[WandbConfig] = None
    """Weights & Biases: logger=wandb."""
    csv: Optional[CSVLoggerConfig] = None
    """A CSV file: logger=csv."""
