"""Experiment loggers. W&B goes offline by itself when no API key is configured, keeps one run id per output
dir (so a requeued job continues its run), and is finished at the end of every job."""

from __future__ import annotations

import netrc
import os
import uuid
from pathlib import Path
from typing import Any


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(save_dir: str, offline: bool | None = None, **kwargs: Any) -> Any:
    """A Lightning WandbLogger; `offline=None` means offline exactly when no credentials are present."""
    from lightning.pytorch.loggers import WandbLogger

    if offline is None:
        offline = not wandb_credentials_present() or os.environ.get("WANDB_MODE") == "offline"
    id_file = Path(save_dir) / "wandb_run_id"
    id_file.parent.mkdir(parents=True, exist_ok=True)
    if not id_file.is_file():
        id_file.write_text(uuid.uuid4().hex[:12])
    return WandbLogger(save_dir=save_dir, offline=offline, id=id_file.read_text().strip(), resume="allow",
                       **kwargs)


def finish_wandb() -> None:
    """Close the job's W&B run so the next job of a one-process multirun gets its own."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
