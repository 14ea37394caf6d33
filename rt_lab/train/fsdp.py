"""Fully sharded data parallel (`trainer=fsdp`): Lightning's FSDPStrategy with each decoder layer its own FSDP unit.

- Wrapping: every module whose class the model lists in `_no_split_modules` (its decoder layer: LlamaDecoderLayer,
  Gemma2DecoderLayer, ...) is one FSDP unit, so a GPU holds one layer's gathered weights at a time, not the model's
  (`layers=[ClassName, ...]` names other classes). The causal LM is FSDP's root, not the LightningModule: Lightning
  would run rt_lab's whole manual-optimization step (micro-batch backwards, clipping, the optimizer step) inside
  the root's forward, where FSDP neither finalizes the gradients of a backward nor allows `clip_grad_norm_`.
  Each micro-batch's loss runs inside the root's forward instead (`through_root`).
- Precision: the sharded flat parameters are the fp32 master weights (rt_lab/train/precision.py upcasts them before
  wrapping); a `*-mixed` precision gathers them in 16 bits for the compute and reduces the gradients in fp32, as
  DDP under autocast does. Lightning's own bf16-mixed FSDP config would reduce gradients in bf16 and cast every
  buffer (RoPE's `inv_freq`) to bf16.
- Activation checkpointing (`trainer.gradient_checkpointing=true`): FSDP's checkpoint wrapper around each wrapped
  layer, in place of transformers' own (which would recompute inside FSDP units and gather their weights twice).
- `last.ckpt`: `state_dict_type=full` gathers one file on rank 0 (what the other strategies write, loadable
  anywhere); `sharded` makes `last.ckpt` a folder in which every rank writes its own shard (no rank-0 memory peak
  for large models; torch.distributed.checkpoint). Either resumes, and either is written beside `last.ckpt` and
  renamed into place (rt_lab/train/preemption.py), so a crash mid-save leaves the previous one whole.
- Full fine-tunes only: FSDP flattens a layer's parameters into one tensor of one dtype, which an fp32 adapter on
  a bf16 base cannot share; adapters train on one GPU (`trainer=gpu`) or with `trainer=ddp`.

torch's FSDP also runs on CPUs (gloo), which is how the tests check it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import OmegaConf
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from rt_lab.train.preemption import replace, staging_of



class LayerWrappedFSDP(FSDPStrategy):
    """FSDPStrategy that wraps the LightningModule's causal LM (`pl_module.model`) layer by layer."""

    def __init__(self, layers: Iterable[str] | None = None, activation_checkpointing: bool = False,
                 state_dict_type: str = "full", sharding_strategy: str = "FULL_SHARD", **kwargs: Any) -> None:
        if state_dict_type not in ("full", "sharded"):
            raise ValueError(f"trainer.lightning.strategy.state_dict_type={state_dict_type!r}: full or sharded")
        super().__init__(state_dict_type=state_dict_type, sharding_strategy=sharding_strategy, **kwargs)
        self.layers = list(layers) if layers else None
        self.activation_checkpointing = activation_checkpointing

    @property
    def mixed_precision_config(self) -> Any:
        precision = str(self.precision_plugin.precision)
        if self.mixed_precision is not None or not precision.endswith("-mixed"):
            return super().mixed_precision_config
        compute = torch.bfloat16 if precision.startswith("bf16") else torch.float16
        return MixedPrecision(param_dtype=compute, reduce_dtype=torch.float32, buffer_dtype=torch.float32)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        if self._state_dict_type != "full":
            return super().lightning_module_state_dict()
        return self.full_state_dict()

    def full_state_dict(self) -> dict[str, Any]:
        """The LightningModule's whole state, as one device's `state_dict()` (rank 0 only on GPUs), whatever
        `last.ckpt`'s format. Every rank must call this."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model, options=full_state_options(self.root_device))

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        if self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's own
        return get_optimizer_state_dict(self.model, optimizer, options=full_state_options(self.root_device))

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        if self._state_dict_type != "sharded":  # one file on rank 0, through the staged checkpoint IO
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        target = Path(self.broadcast(filepath))
        staging = staging_of(target)
        super().save_checkpoint(checkpoint, staging, storage_options)  # every rank its shard
        self.barrier("sharded checkpoint staged")
        if self.global_rank == 0:
            replace(staging, target)
        self.barrier("sharded checkpoint in place")

    def _setup_model(self, model: nn.Module) -> nn.Module:
        causal_lm = model.model
        frozen = [name for name, p in causal_lm.named_parameters() if not p.requires_grad]
        if frozen:
            raise ValueError(f"trainer=fsdp shards full fine-tunes (adapter=full); {len(frozen)} parameters are "
                             f"frozen (e.g. {frozen[0]}). Train adapters with trainer=gpu or trainer=ddp")
        classes = layer_classes(causal_lm, self.layers)
        # the device itself, not Lightning's device index: FSDP refuses index None, which is the CPU's
        model.model = FullyShardedDataParallel(
            causal_lm, auto_wrap_policy=ModuleWrapPolicy(classes), device_id=self.root_device,
            cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy, **self.kwargs)
        if self.activation_checkpointing:
            _setup_activation_checkpointing(model.model, {"check_fn": lambda module: isinstance(module, classes)})
        return model


def layer_classes(model: nn.Module, names: Iterable[str] | None = None) -> tuple[type[nn.Module], ...]:
    """The module classes named by `names`, or by the model's `_no_split_modules` (its decoder layer), resolved
    among the model's own modules."""
    wanted = set(names) if names else set(getattr(model, "_no_split_modules", None) or ())
    if not wanted:
        raise ValueError(f"{type(model).__name__} lists no _no_split_modules to wrap as FSDP units; name its "
                         "decoder layer class: trainer.lightning.strategy.layers=[ClassName]")
    found = {type(module) for module in model.modules() if type(module).__name__ in wanted}
    missing = wanted - {cls.__name__ for cls in found}
    if missing:
        raise ValueError(f"FSDP layers {sorted(missing)} are not module classes of {type(model).__name__}")
    return tuple(sorted(found, key=lambda cls: cls.__name__))


def is_sharded(module: Any) -> bool:
    return isinstance(module, FullyShardedDataParallel)


def through_root(model: Any, compute: Callable[[Any], Any]) -> Any:
    """`compute(causal LM)`; under FSDP inside the root unit's forward. rt_lab's loss calls the decoder and reads
    the LM head's weight itself (rt_lab/train/token_losses.py), not the model's forward; only inside the root's
    forward are the weights outside the layer units (embeddings, final norm, LM head) gathered in the compute
    dtype, and only what that forward returns has its backward finalized by FSDP. The forward is redirected as
    Lightning does for a training step."""
    if not is_sharded(model):
        return compute(model)
    causal_lm = model.module
    forward = causal_lm.forward

    def redirected(*args: Any, **kwargs: Any) -> Any:
        causal_lm.forward = forward  # the computation may call the model's own forward
        return compute(causal_lm)

    causal_lm.forward = redirected
    try:
        return model()
    finally:
        causal_lm.forward = forward


def configured(strategy: Any) -> bool:
    """Whether a `trainer.lightning.strategy` config is this module's FSDP."""
    return OmegaConf.is_dict(strategy) and strategy.get("_target_") == f"{__name__}.{LayerWrappedFSDP.__name__}"


def full_state_options(device: torch.device) -> Any:
    """Gather whole tensors; on GPUs to the CPU of rank 0 alone. On a CPU every rank gathers: torch's offload
    (to the CPU, from the CPU) frees the memory it copies from and crashes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=device.type != "cpu")


def full_module_state(strategy: Any) -> dict[str, Any]:
    """The LightningModule's whole state under any strategy (on rank 0 at least; every rank must call this)."""
    if isinstance(strategy, LayerWrappedFSDP):
        return strategy.full_state_dict()
    return strategy.lightning_module_state_dict()


def unsharded(model: Any) -> Any:
    """A trained causal LM as one ordinary module: `model` itself unless FSDP wraps it; then its full state,
    gathered to the CPU of rank 0, in a fresh model of the same class (None on the other ranks). Every rank must
    call this."""
    if not is_sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=full_state_options(model.compute_device))
    if torch.distributed.get_rank() != 0:
        return None
    causal_lm = model.module
    copy = type(causal_lm).from_pretrained(None, config=causal_lm.config, state_dict=state, dtype=torch.float32)
    return copy.train()
