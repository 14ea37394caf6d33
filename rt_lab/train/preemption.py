"""Checkpoints that survive a crash or a preemption at any moment.

Every save is written beside `last.ckpt` and renamed over it (`StagedCheckpointIO`, `replace`), so a crash mid-save
leaves the previous checkpoint whole, and `recover` clears what the crash left. Under submitit, the
checkpoint-and-requeue signal is held until the running optimizer step ends, `last.ckpt` is saved, the step's
metrics are logged, and only then handed to submitit, which requeues the job and exits. The requeued job reruns in
the same dir and resumes from that checkpoint."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from rt_lab.io import exclusive

log = logging.getLogger(__name__)


def staging_of(checkpoint: Path) -> Path:
    """Where a checkpoint is saved before `replace` moves it in."""
    return checkpoint.with_name(f".{checkpoint.name}.tmp")


def aside_of(checkpoint: Path) -> Path:
    """Where `replace` moves the checkpoint it replaces, until the new one is in."""
    return checkpoint.with_name(f".{checkpoint.name}.old")


def remove(path: Path) -> None:
    """Delete a file or a folder of shards, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def replace(staging: Path, target: Path) -> None:
    """Put the saved `staging` where `target` is: a file over a file (or over nothing) in one atomic rename; a
    folder of FSDP shards (or a change between file and folder) by moving the old one aside, moving the new one in,
    then deleting the old one. A crash at any point leaves a complete checkpoint that `recover` finds, and any
    leftover of an earlier crash (the aside one a file or a folder) is cleared."""
    aside = aside_of(target)
    if target.exists() and (target.is_dir() or staging.is_dir()):
        remove(aside)  # `target` is complete: the aside leftover is not needed
        os.replace(target, aside)
        os.replace(staging, target)  # a crash just before this: `recover` moves the complete staging in
    else:
        os.replace(staging, target)
    remove(aside)


def recover(checkpoint: Path) -> None:
    """Clear what a crash while saving or in `replace` left beside `checkpoint`, so that it is the newest complete
    checkpoint, or absent when none is. Every rank may call this: they take turns under a lock."""
    staging, aside = staging_of(checkpoint), aside_of(checkpoint)
    with exclusive(checkpoint.with_name(f".{checkpoint.name}.lock"), "clearing leftovers of a crashed save"):
        if not checkpoint.exists() and aside.exists():
            # The crash fell between replace's two renames: the aside checkpoint is complete, and so is the staged
            # one when there (replace moves only a finished save), which is newer.
            newest = staging if staging.exists() else aside
            log.warning("%s missing after a crash mid-replace: recovering it from %s", checkpoint, newest)
            os.replace(newest, checkpoint)
        if staging.exists():
            # beside a checkpoint, or with no aside one, it is a save cut short: perhaps incomplete
            log.warning("deleting %s: a checkpoint save cut short by a crash", staging)
            remove(staging)
        remove(aside)


class StagedCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, saving straight to a staging file on the checkpoint's own filesystem, synced,
    then renamed into place. Lightning's own writer holds the whole checkpoint in memory and renames a temporary
    file from the system's temp dir, which is a copy, not an atomic rename, when the run dir is on another
    filesystem (a cluster's shared storage)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_of(target)
        with staging.open("wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        replace(staging, target)


def submitit_signal() -> signal.Signals | None:
    """The signal submitit's job handler listens to, when this process is a submitit job."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


class PreemptionGuard(L.Callback):
    """Install while training: a preemption signal mid-step is answered at the step's end. Every rank holds
    the signal and the ranks agree at each step boundary, so all of them join the checkpoint save."""

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint
        self.signum = submitit_signal()
        self.original: Callable[..., Any] | None = None
        self.pending: tuple[int, FrameType | None] | None = None
        self.saved = False

    def _defer(self, signum: int, frame: FrameType | None) -> None:
        log.warning("preemption signal %s: checkpointing at the end of this optimizer step", signum)
        self.pending = (signum, frame)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.signum is not None:
            self.original = signal.getsignal(self.signum)
            signal.signal(self.signum, self._defer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.signum is None or not trainer.strategy.reduce_boolean_decision(self.pending is not None, all=False):
            return
        # every rank joins; rank 0 writes (FSDP sharded: each rank its shard), staged and renamed into place
        trainer.save_checkpoint(self.checkpoint)
        if trainer.is_global_zero:
            log.warning("saved %s at step %d", self.checkpoint, trainer.global_step)
        self.saved = True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # the step's batch-end work is done by now (the training's end hands over after the last step)
        if self.saved:
            self._hand_over()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._hand_over()  # a signal during the last step: its checkpoint is final
        if self.original is not None:
            signal.signal(self.signum, self.original)

    def _hand_over(self) -> None:
        if self.pending is not None and callable(self.original):
            signum, frame = self.pending
            self.pending = None
            log.warning("handing the preemption over to submitit to requeue")
            self.original(signum, frame)
