"""`adapter/`: what training updates (rt_lab/train/adapters.py) and how the trained model is saved for
generation (rt_lab/train/export.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from rt_lab.config.checks import ConfigValueError, registered


@dataclass
class AdapterConfig:
    name: str = MISSING
    """full, lora or qlora."""
    export: str = "merge"
    """How model/ is saved (rt_lab/train/export.py EXPORTS): merge (dense), merge_bf16 (QLoRA: the adapter merged
    into the base reloaded unquantized, as An et al.), adapter_only."""
    lora: Optional[dict[str, Any]] = None
    """peft.LoraConfig's arguments (with its _target_); null: a full fine-tune."""
    quantization: Optional[dict[str, Any]] = None
    """transformers.BitsAndBytesConfig's arguments (with its _target_): the base loaded quantized (QLoRA)."""

    def check(self) -> None:
        from rt_lab.train.export import EXPORTS

        registered("export", self.export, "rt_lab.train.export:EXPORTS")
        needed = EXPORTS[self.export].requires
        if needed and not getattr(self, needed):
            raise ConfigValueError("export", self.export, f"needs adapter.{needed}, which adapter={self.name} does "
                                   f"not set (exports: {sorted(EXPORTS)})")
