"""Epoch selection inside one training run (Hewitt et al.'s protocol, `generation.at_epochs=[5,7,10,15,20]`).

At the end of each listed epoch the current weights go through the run's own export (`adapter.export`), are
loaded back and answer the eval prompts into `<run_dir>/epochs/<N>/model_outputs.json`, exactly as a separate
run of N epochs would generate after training (the invariant of rt_lab.run: a run generates from what its
export loads back). The export is deleted once its outputs are written. The last epoch is the run's own
generation stage: its `model_outputs.json` is copied into `epochs/<max_epochs>/`. With `compare.reference.file`
set, an `EpochJudge` (rt_lab.compare.epoch_selection builds it: judging lives in compare/) judges each epoch's outputs
as the sweep comparison judges a run and `epoch_selection/win_rate` is logged; `epochs/summary.json` lists every
epoch.

An epoch's `model_outputs.json` (written atomically, last) is its marker: a requeued run skips finished epochs.
Epoch k+1 never trains before epoch k's outputs exist, so a checkpoint past an epoch's end implies its outputs.

Only the learning-rate schedule differs from separate runs: a decaying schedule (linear, cosine) decays over
the whole run, while each of H's separate runs decayed over its own length. One run reproduces separate runs
exactly under `trainer.schedule.name=constant` (tested) and approximates them otherwise."""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import lightning as L
import numpy as np
import torch
from omegaconf import ListConfig

from rt_lab.config.root import RootConfig
from rt_lab.train.export import Base, Export, free_memory
from rt_lab.generate.backends import RunModel, make_generator
from rt_lab.generate.decode import generate_outputs
from rt_lab.io import atomic_write_json, atomic_write_text
from rt_lab.layout import RunDir
from rt_lab.train.fit import trainable, trained
from rt_lab.train.fsdp import full_module_state
from rt_lab.data.prompts import Prompt

log = logging.getLogger(__name__)

KEY = "generation.at_epochs"


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Loading and adapting a model copy draws random initial weights; training afterwards must see the RNG
    streams as if nothing happened (dropout masks, so that one run equals separate runs)."""
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        yield
    random.setstate(python)
    np.random.set_state(numpy)


def trained_copy(state: dict[str, torch.Tensor], base: Base, cfg: RootConfig) -> Any:
    """A fresh model holding the trained weights of `state` (the LightningModule's state dict), as train()
    would return it: the export may consume it (merge, cast) while training goes on with the original."""
    model = trainable(base.load(), cfg)
    needed = {name for name, p in model.named_parameters() if p.requires_grad}
    weights = {key.removeprefix("model."): value for key, value in state.items()}
    missing = sorted(needed - weights.keys())
    if missing:
        raise KeyError(f"the trained state lacks {len(missing)} trainable tensors, e.g. {missing[:3]}")
    model.load_state_dict({name: weights[name] for name in needed}, strict=False)
    return trained(model, cfg)


class EpochJudge(Protocol):
    """Judges one run's per-epoch outputs as they are written (rt_lab.compare.epoch_selection.RunEpochJudge)."""

    def __call__(self, epoch: int) -> dict[str, Any] | None:
        """Judge `epoch`'s outputs; their metrics, or None when they could not be judged now (said in the log)."""

    def metrics(self, epoch: int) -> dict[str, Any]:
        """What judging `epoch` found so far ({} before it is judged)."""


@dataclass
class EpochSelection:
    """Per-epoch outputs (and judgments) of one run; `callback()` produces them during training."""

    cfg: RootConfig
    tokenizer: Any
    template: Any
    prompts: Sequence[Prompt]
    base: Base
    export: Export
    run_dir: Path
    loggers: Sequence[Any]
    epochs: list[int]
    judge: EpochJudge | None = None

    @classmethod
    def build(cls, cfg: RootConfig, tokenizer: Any, template: Any, prompts: Sequence[Prompt], base: Base,
              export: Export, run_dir: Path, loggers: Sequence[Any],
              make_judge: Callable[[], EpochJudge | None] = lambda: None) -> EpochSelection | None:
        """None when `generation.at_epochs` is unset (rt_lab.config.validate checked the list); `make_judge`
        builds the judge now, so a bad reference file or judge fails before training."""
        epochs = list(cfg.generation.at_epochs or [])
        if not epochs:
            return None
        with preserved_rng():  # a local judge's loading must not shift training's random streams
            judge = make_judge()
        return cls(cfg, tokenizer, template, prompts, base, export, run_dir, loggers, epochs, judge)

    @property
    def layout(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def final(self) -> int:
        return int(self.cfg.trainer.lightning.max_epochs)

    def done(self, epoch: int) -> bool:
        return self.layout.epoch(epoch).outputs.is_file()

    def callback(self) -> L.Callback:
        return EpochEndGeneration(self)

    def generate(self, epoch: int, trained: Any) -> None:
        """Export `trained` (which the export then owns), load it back, answer the prompts, drop the export."""
        out = self.layout.epoch(epoch)
        export_dir = out.model
        shutil.rmtree(export_dir, ignore_errors=True)  # half-written by an interrupted attempt
        self.export.save(trained, self.tokenizer, export_dir, self.base)
        del trained
        free_memory()
        self.export.finish(self.tokenizer, export_dir, self.base)
        model = RunModel(export_dir, partial(self.export.load, export_dir, self.base))  # as a separate run loads it
        answer = make_generator(self.cfg, self.tokenizer, model)
        generate_outputs(answer, self.tokenizer, self.template, self.prompts, self.cfg.model.bos,
                         self.cfg.run.name, out.path, self.cfg.generation.instruction_prefix)
        del model, answer
        free_memory()
        shutil.rmtree(export_dir)
        log.info("epoch %d: outputs in %s", epoch, out.outputs)

    def evaluate(self, epoch: int, step: int | None) -> None:
        """Judge an epoch's outputs and log its win rate; when they cannot be judged now, the outputs stay and
        `python -m rt_lab.compare SWEEP --pick-epoch` judges them later."""
        metrics = self.judge(epoch) if self.judge else None
        if metrics is None:
            return
        for logger in self.loggers:
            logger.log_metrics({"epoch_selection/win_rate": metrics["win_rate"], "epoch_selection/epoch": epoch},
                               step=step)
            logger.save()

    def after_run(self, outputs: Path) -> None:
        """The run's own outputs are the last epoch's; then the run's summary of every epoch."""
        if self.final in self.epochs:
            atomic_write_text(self.layout.epoch(self.final).outputs, outputs.read_text(encoding="utf-8"))
            self.evaluate(self.final, None)
        lost = [epoch for epoch in self.epochs if not self.done(epoch)]
        if lost:
            log.warning("%s: epochs %s have no outputs, and training is over (was %s added after training "
                        "passed them?)", self.run_dir, lost, KEY)
        self.write_summary()

    def write_summary(self) -> None:
        rows = []
        for epoch in self.epochs:
            judged = self.judge.metrics(epoch) if self.judge else {}
            rows.append({"epoch": epoch, "outputs": self.done(epoch), **judged})
        atomic_write_json(self.layout.epoch_summary, rows)


class EpochEndGeneration(L.Callback):
    """Answers the prompts at the end of each listed epoch but the last (the run's generation stage answers
    that one). Every rank gathers the state (FSDP needs all of them); rank 0 generates while the others wait."""

    def __init__(self, selection: EpochSelection) -> None:
        self.selection = selection

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a checkpoint written at an epoch's last step holds that epoch's weights; its outputs may be missing
        # when the job died while generating them
        steps = trainer.datamodule.steps_per_epoch()
        if trainer.global_step and trainer.global_step % steps == 0:
            self._reached(trainer, trainer.global_step // steps)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if trainer.global_step == epoch * trainer.datamodule.steps_per_epoch():  # not an epoch cut short
            self._reached(trainer, epoch)

    def _reached(self, trainer: L.Trainer, epoch: int) -> None:
        selection = self.selection
        if epoch not in selection.epochs or epoch == selection.final:
            return
        if not selection.done(epoch):
            state = full_module_state(trainer.strategy)  # whole tensors, also when last.ckpt is FSDP shards
            if trainer.is_global_zero:
                with preserved_rng():
                    selection.generate(epoch, trained_copy(state, selection.base, selection.cfg))
            del state
            trainer.strategy.barrier("epoch_outputs")
        if trainer.is_global_zero:
            with preserved_rng():  # the API judge's retry jitter draws from `random`
                selection.evaluate(epoch, trainer.global_step)
            selection.write_summary()
        trainer.strategy.barrier("epoch_judged")
