"""Full fine-tuning, LoRA or QLoRA (4-bit base + LoRA) through peft."""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate

log = logging.getLogger(__name__)


def quantization_config(adapter: Any) -> Any:
    """The BitsAndBytesConfig a QLoRA adapter needs at load time (None for the others)."""
    return instantiate(adapter.quantization) if adapter.get("quantization") else None


def keep_4bit_gradients(model: Any) -> int:
    """bitsandbytes repacks 4-bit weights for avx512-bf16 CPUs at the first no-grad forward, after which no
    gradient reaches the LoRA weights; switching that path off keeps QLoRA trainable on CPU."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def apply_adapter(model: Any, adapter: Any, gradient_checkpointing: bool = False) -> Any:
    if not adapter.get("lora"):  # a full fine-tune: no adapter config
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if adapter.get("quantization"):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, instantiate(adapter.lora))
    model.train()
    return model


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
