"""Training stage: a real Lightning Trainer with `last.ckpt` checkpoints that a rerun resumes from."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

from rt_lab.config.root import RootConfig
from rt_lab.train import fsdp, segment_attention
from rt_lab.train.adapters import apply_adapter
from rt_lab.data.datamodule import InstructionDataModule
from rt_lab.train.module import CausalLMModule
from rt_lab.layout import RunDir
from rt_lab.loggers import TrimLogsOnResume
from rt_lab.train.precision import cast_full_fine_tune, keep_master_weights_fp32, warn_low_precision
from rt_lab.train.preemption import PreemptionGuard, StagedCheckpointIO, recover

log = logging.getLogger(__name__)

# Lightning warns that manual-optimization checkpoints hold the state after the step; that is the state a
# resume needs (it continues with the next step).
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, knowing after a resume that the checkpoint it resumed from is this step's,
    saved already: a run resumed from its final step's checkpoint (killed while exporting, say) ends without
    writing the whole checkpoint again, as Lightning would at the training's end."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.ckpt_path:
            self._last_global_step_saved = trainer.global_step
            self._last_checkpoint_saved = str(trainer.ckpt_path)


def build_trainer(cfg: RootConfig, run_dir: Path, loggers: Sequence[Any], callbacks: Sequence[Any] = ()) -> L.Trainer:
    layout = RunDir(run_dir)
    checkpoint = LastCheckpoint(dirpath=layout.checkpoints, save_last=True, save_top_k=0,
                                every_n_train_steps=cfg.trainer.checkpoint_every_n_steps)
    guard = PreemptionGuard(layout.checkpoint)
    trim = TrimLogsOnResume()
    # Under SLURM, submitit owns the requeue signal; Lightning's own auto-requeue would fight it.
    plugins = [StagedCheckpointIO(), *([SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else [])]
    return instantiate(cfg.trainer.lightning, default_root_dir=str(run_dir),
                       callbacks=[checkpoint, guard, trim, *callbacks], logger=list(loggers) or False, plugins=plugins)


def build_datamodule(cfg: RootConfig, tokenizer: Any, template: Any, dataset: Any = None) -> InstructionDataModule:
    """The training data of a composed config."""
    return InstructionDataModule(cfg.data, cfg.dataset if dataset is None else dataset, cfg.method, template,
                                 tokenizer, cfg.model.bos, cfg.paths.data_dir)


def build_module(cfg: RootConfig, model: Any, data: InstructionDataModule) -> CausalLMModule:
    """The LightningModule that trains `model` on `data` as the `trainer/` config says."""
    return CausalLMModule(model, instantiate(cfg.trainer.optimizer), cfg.trainer.schedule, cfg.trainer.max_grad_norm,
                          data.steps_per_epoch, cfg.trainer.loss_normalization, cfg.trainer.fused_loss)


def trainable(model: Any, cfg: RootConfig) -> Any:
    """The model as training updates it: the configured adapter applied, every trainable weight fp32, and with
    packing, sdpa attending per packed sequence (rt_lab/train/segment_attention.py)."""
    # under trainer=fsdp the strategy checkpoints whole FSDP units instead (rt_lab/train/fsdp.py)
    checkpointing = cfg.trainer.gradient_checkpointing and not fsdp.configured(cfg.trainer.lightning.strategy)
    model = apply_adapter(model, cfg.adapter, checkpointing)
    keep_master_weights_fp32(model)
    if cfg.data.packing:
        segment_attention.use_for_packing(model)
    return model


def trained(model: Any, cfg: RootConfig) -> Any:
    """The model as train() hands it on: a full fine-tune back in `model.dtype` (rt_lab/train/precision.py), its
    attention as loaded."""
    segment_attention.restore(model)
    return cast_full_fine_tune(model, cfg.model.dtype)


def train(cfg: RootConfig, model: Any, tokenizer: Any, template: Any, run_dir: Path, loggers: Sequence[Any],
          callbacks: Sequence[Any] = (), dataset: Any = None) -> Any:
    """Fit the model on `dataset` (default: cfg.dataset), resuming from `checkpoints/last.ckpt` when present, and
    return the trained model, a full fine-tune back in `model.dtype` (rt_lab/train/precision.py). In a run of
    several processes only rank 0 gets the model (the others get None): it alone exports and generates."""
    warn_low_precision(cfg.trainer.lightning.precision)
    model = trainable(model, cfg)
    data = build_datamodule(cfg, tokenizer, template, dataset)
    module = build_module(cfg, model, data)
    trainer = build_trainer(cfg, run_dir, loggers, callbacks)
    last = RunDir(run_dir).checkpoint  # a file, or a folder of shards (trainer=fsdp, state_dict_type=sharded)
    recover(last)  # a crash mid-save may have left it aside
    if last.exists():
        log.info("resuming training from %s", last)
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.exists() else None)
    model = fsdp.unsharded(module.model)  # every rank joins the gather
    return trained(model, cfg) if trainer.is_global_zero else None
