"""`trainer/`: optimisation (rt_lab/train/fit.py, rt_lab/train/module.py): Lightning's Trainer, the optimizer and
schedule, the loss's normalisation, clipping, checkpoints, the seed. What one optimizer step holds is data/."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from rt_lab.config.checks import ConfigValueError, at_least, in_range, one_of, registered

FSDP_NAMES = ("fsdp", "fsdp_cpu_offload")  # Lightning's registered FSDP: one unit for the whole model


@dataclass
class ScheduleConfig:
    name: str = "linear"
    """linear, cosine or constant, after warmup (rt_lab/train/optim.py)."""
    warmup_ratio: float = 0.03
    """Warmup as a fraction of all optimizer steps."""

    def check(self) -> None:
        from rt_lab.train.optim import SCHEDULES

        one_of("name", self.name, list(SCHEDULES))
        in_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0, high_open=True)


@dataclass
class TrainerConfig:
    lightning: dict[str, Any] = field(default_factory=dict)
    """lightning.Trainer's arguments (with its _target_): accelerator, devices, num_nodes, strategy, precision,
    max_epochs, max_steps, ..."""
    optimizer: dict[str, Any] = field(default_factory=dict)
    """The optimizer (_target_, _partial_: true, lr, weight_decay, betas, ...)."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """The learning-rate schedule."""
    max_grad_norm: Optional[float] = 1.0
    """Clip the gradient norm to this; null: no clipping."""
    loss_normalization: str = "token"
    """token: summed token losses / supervised tokens of the step (every token weighs the same); sequence: the
    mean over the step's rows of each row's mean token loss (open-instruct reduce_loss=mean, Hewitt et al.);
    micro_batch: the mean over the step's micro-batches of each one's token mean (the Hugging Face Trainer before
    transformers 4.46, An et al.)."""
    fused_loss: bool = True
    """LM head and cross-entropy fused and chunked (no full-vocabulary logits tensor); false: the reference path."""
    allow_low_precision_weights: bool = False
    """bf16-true / 16-true precision stores weights in 16 bits and loses small updates: refused unless true."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward (less memory, slower)."""
    checkpoint_every_n_steps: int = 50
    """Save checkpoints/last.ckpt every N optimizer steps (and at the end, and when preempted)."""
    seed: int = 1
    """Seeds everything: the data order, dropout, LoRA's initial weights."""

    def check(self) -> None:
        registered("loss_normalization", self.loss_normalization, "rt_lab.train.loss:LOSS_NORMALIZATIONS")
        at_least("max_grad_norm", self.max_grad_norm, 0)
        at_least("checkpoint_every_n_steps", self.checkpoint_every_n_steps, 1)
        lr = self.optimizer.get("lr")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))):
            raise ConfigValueError("optimizer.lr", lr, "must be a number, e.g. trainer.optimizer.lr=1e-5")
        at_least("optimizer.lr", lr, 0)
        for key in ("max_epochs", "devices", "num_nodes"):
            value = self.lightning.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                at_least(f"lightning.{key}", value, 1 if key != "max_epochs" else 0)
        self.check_precision()
        self.check_strategy()

    def check_precision(self) -> None:
        from rt_lab.train.precision import LOW_PRECISION_WEIGHTS

        precision = str(self.lightning.get("precision"))
        if precision in LOW_PRECISION_WEIGHTS and not self.allow_low_precision_weights:
            raise ConfigValueError("lightning.precision", precision, "trains 16-bit weights, which lose every update "
                                   "smaller than half a ulp (at lr 1e-5 almost all of them). Use bf16-mixed (fp32 "
                                   "master weights, bf16 compute), or set trainer.allow_low_precision_weights=true "
                                   "to accept the lost updates")

    def check_strategy(self) -> None:
        strategy = self.lightning.get("strategy")
        if isinstance(strategy, str) and strategy in FSDP_NAMES:
            raise ConfigValueError("lightning.strategy", strategy, "wraps the whole model as one FSDP unit, which "
                                   "cannot clip rt_lab's gradients; use trainer=fsdp (each decoder layer a unit: "
                                   "rt_lab/train/fsdp.py)")
