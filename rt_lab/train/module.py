"""The LightningModule: a causal LM (optionally with a peft adapter) trained one window of rows per optimizer
step, its loss normalised over the whole window (rt_lab/train/loss.py), so packing and accumulation splits never
change it."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import Any, Callable

import lightning as L
import torch

from rt_lab.train.adapters import count_parameters
from rt_lab.train.fsdp import is_sharded, through_root
from rt_lab.train.loss import LOSS_NORMALIZATIONS, example_loss_sums, supervised_targets
from rt_lab.train.optim import build_schedule
from rt_lab.train.token_losses import FusedHead, fused_head

log = logging.getLogger(__name__)


class CausalLMModule(L.LightningModule):
    def __init__(self, model: Any, optimizer: Callable[..., torch.optim.Optimizer], schedule: Any,
                 max_grad_norm: float | None, steps_per_epoch: Callable[[], int],
                 loss_normalization: str = "token", fused_loss: bool = True) -> None:
        super().__init__()
        self.steps_per_epoch = steps_per_epoch  # optimizer steps per epoch, known once the data is set up
        self.normalization = LOSS_NORMALIZATIONS.lookup(loss_normalization, "trainer.loss_normalization")
        self.model = model
        self.optimizer_factory = optimizer
        self.schedule = schedule
        self.max_grad_norm = max_grad_norm
        self.fused_loss = fused_loss
        self.loss_head: FusedHead | None = None  # chosen in on_train_start
        self.automatic_optimization = False  # accumulation is one window per step, normalised as a whole
        self.supervised_seen = 0
        trainable, total = count_parameters(model)
        self.trainable_parameters, self.total_parameters = trainable, total
        self.partial_checkpoint = trainable < total  # adapters: checkpoints hold the trainable weights only
        self.strict_loading = not self.partial_checkpoint

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])
        scheduler = build_schedule(optimizer, self.schedule.name, self.schedule.warmup_ratio, self.total_steps())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def total_steps(self) -> int:
        # Not `trainer.estimated_stepping_batches`: it would start the data iterator before a checkpoint's
        # global step is restored, and the window loader derives its resume position from that step.
        trainer = self.trainer
        per_epoch = self.steps_per_epoch()
        by_epochs = per_epoch * trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        if trainer.max_steps and trainer.max_steps > 0:
            return min(trainer.max_steps, by_epochs) if by_epochs else trainer.max_steps
        if by_epochs is None:
            raise ValueError("set trainer.lightning.max_epochs or trainer.lightning.max_steps")
        return by_epochs

    def on_train_start(self) -> None:
        log.info("trainable parameters: %d of %d (%.2f%%)", self.trainable_parameters, self.total_parameters,
                 100 * self.trainable_parameters / self.total_parameters)
        if self.global_step == 0:  # a resumed run has them from its first start
            for logger in self.loggers:
                logger.log_metrics({"params/trainable": self.trainable_parameters,
                                    "params/total": self.total_parameters}, step=0)
        # the loss path, chosen here, not at setup: the strategy has placed the model by now (under FSDP wrapped it,
        # and the head's weights are whole only inside the root's forward)
        with torch.no_grad():  # a probe: nothing of it is trained, and FSDP hooks no backward onto its result
            self.loss_head = through_root(self.model, fused_head) if self.fused_loss else None

    def _no_sync(self, skip: bool) -> contextlib.AbstractContextManager:
        wrapped = self.trainer.strategy.model
        # DDP only: under trainer=fsdp the strategy's model is this module (FSDP wraps self.model), so each
        # micro-batch reduce-scatters its gradients; FSDP's no_sync would hold them unsharded in between
        return wrapped.no_sync() if skip and hasattr(wrapped, "no_sync") else contextlib.nullcontext()

    def _clip_gradients(self, optimizer: Any) -> None:
        if is_sharded(self.model):  # the norm over every rank's shard (Lightning's clipping refuses FSDP)
            self.model.clip_grad_norm_(self.max_grad_norm)
        else:
            self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")

    def training_step(self, window: list[dict[str, torch.Tensor]], batch_idx: int) -> torch.Tensor:
        started = time.perf_counter()
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        wheres = [supervised_targets(micro) for micro in window]
        local = torch.stack([torch.stack([self.normalization.units(w.counts), w.counts.sum()])
                             for w in wheres]).sum(dim=0)
        total, tokens = self.trainer.strategy.reduce(local.float(), reduce_op="sum")  # one all-reduce
        tokens = int(tokens)
        # DDP averages gradients over ranks; scaling by world size turns that back into the window's sum.
        scale = self.trainer.world_size / total
        loss_sum = torch.zeros((), device=self.device)
        for index, (micro, where) in enumerate(zip(window, wheres)):
            with self._no_sync(index < len(window) - 1):
                sums = through_root(self.model, lambda lm: example_loss_sums(lm, micro, where, self.loss_head))
                micro_loss = self.normalization.numerator(sums, where.counts)
                self.manual_backward(micro_loss * scale)
            loss_sum += micro_loss.detach()
        if self.max_grad_norm:
            self._clip_gradients(optimizer)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        loss = self.trainer.strategy.reduce(loss_sum, reduce_op="sum") / total
        self.supervised_seen += tokens
        elapsed = time.perf_counter() - started
        metrics = {"train/loss": loss, "train/lr": lr, "train/supervised_tokens": float(self.supervised_seen),
                   "train/supervised_tokens_per_s": tokens / elapsed}
        self.log_dict(metrics, prog_bar=True, logger=False)
        self.log_step({key: float(value) for key, value in metrics.items()})
        return loss

    def log_step(self, metrics: dict[str, float]) -> None:
        """The step's metrics to the loggers, written before its checkpoint is saved. Lightning would log them
        after the batch-end hooks, where the checkpoint is saved: a crash in between lost them for good, as the
        resumed run starts after that step."""
        step = self.global_step - 1  # Lightning's step numbering: the optimizer has stepped already
        if (step + 1) % self.trainer.log_every_n_steps:
            return
        for logger in self.loggers:
            logger.log_metrics({**metrics, "epoch": self.current_epoch}, step=step)
            logger.save()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.partial_checkpoint:
            trainable = {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        checkpoint["supervised_seen"] = self.supervised_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Dropout after a resume then draws the same masks an uninterrupted run would have drawn.
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        self.supervised_seen = checkpoint.get("supervised_seen", 0)
