"""Preemption under submitit: its checkpoint-and-requeue signal is held until the running optimizer step ends,
`last.ckpt` is saved, the step's metrics are logged, and only then handed to submitit, which requeues the job
and exits. The requeued job reruns in the same dir and resumes from that checkpoint."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import lightning as L

log = logging.getLogger(__name__)


def replace(staging: Path, target: Path) -> None:
    """Put the saved `staging` where `target` is: a file in one atomic rename; a folder of FSDP shards (or a change
    between file and folder) by moving the old one aside first, then deleting it."""
    if not (target.is_dir() or (staging.is_dir() and target.exists())):
        os.replace(staging, target)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(staging, target)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()


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
        staging = self.checkpoint.with_name(f".{self.checkpoint.name}.tmp")
        trainer.save_checkpoint(staging)  # every rank joins; rank 0 writes (FSDP sharded: each rank its shard)
        if trainer.is_global_zero:
            replace(staging, self.checkpoint)
            log.warning("saved %s at step %d", self.checkpoint, trainer.global_step)
        self.saved = True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # Lightning logs a step's metrics after its batch-end hooks; hand over once they are written.
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
