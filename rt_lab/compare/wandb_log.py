"""A comparison in W&B, next to the runs' training logs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rt_lab.config.logger import WandbConfig
from rt_lab.compare.judging import Comparison
from rt_lab.layout import SweepDir
from rt_lab.loggers import wandb_run_id
from rt_lab.wandb_mode import wandb_mode


def log_comparison(wandb_cfg: WandbConfig, sweep_dir: Path, comparisons: Sequence[Comparison], metrics: Sequence[dict],
                   table: Sequence[dict], images: Sequence[Path]) -> None:
    """The comparison in W&B: each job's own run gets its win-rate metrics and a table of (instruction, output,
    reference, preference) rows; a sweep-level summary run gets the summary tables and the plots."""
    import wandb

    common = {"project": wandb_cfg.get("project"), "entity": wandb_cfg.get("entity"), "group": sweep_dir.name,
              "mode": wandb_mode(wandb_cfg.get("mode", "auto")), "resume": "allow"}
    for comparison in comparisons:
        run_dir = comparison.run.layout
        with wandb.init(id=wandb_run_id(run_dir.wandb_run_id), dir=str(run_dir.path), **common) as run:
            prefix = f"compare/{comparison.name}"
            run.summary.update({f"{prefix}/{key}": value for key, value in comparison.metrics.items()
                                if isinstance(value, (int, float))})
            columns = ["instruction", "output", "reference", "preference", "reason"]
            run.log({f"{prefix}/judgments": wandb.Table(
                columns=columns, data=[[row[c] for c in columns] for row in comparison.rows])})
    layout = SweepDir(sweep_dir)
    with wandb.init(id=wandb_run_id(layout.wandb_run_id), dir=str(layout.comparison),
                    name=f"{sweep_dir.name}-summary", job_type="compare", **common) as run:
        for name, rows in (("summary", metrics), ("table", table)):
            columns = list(dict.fromkeys(key for row in rows for key in row))
            run.log({name: wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])})
        run.log({image.stem: wandb.Image(str(image)) for image in images})
