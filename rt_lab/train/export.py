"""Writing a trained model where generation (now or after a requeue) and users can load it, and loading it.

`adapter.export` names one entry of EXPORTS, the one place that pairs how a trained model is written to the run's
`model/` folder with how the run loads it back. A run always generates from what it loads back, so a first run
and a rerun after `trained.done` use the same model.

- `merge`: adapters merged in place into the base they were trained on (LoRA, full precision); for a full fine-tune
  a plain save. `model/` is a dense folder.
- `merge_bf16`: QLoRA as An et al. (`lora_merge.py`): the adapter is merged into the base reloaded unquantized in
  the quantization's compute dtype (bf16), not into the 4-bit weights. `model/` is the dense merged folder (what
  vLLM and users load), `model/adapter/` the trained adapter.
- `adapter_only`: `model/` is the peft adapter folder; generation attaches it to the (quantized) base again."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf

from rt_lab.config.model import ModelConfig
from rt_lab.layout import MERGED_ADAPTER
from rt_lab.models import load_model
from rt_lab.registry import Registry

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Base:
    """The run's base model: its `model` config, its folder (or hub id), and the quantization training used."""

    cfg: ModelConfig
    path: str
    quantization: Any = None

    def load(self) -> Any:
        """The base as training loads it (4-bit when the adapter quantizes)."""
        return load_model(self.cfg, self.path, self.quantization)

    def compute_dtype_cfg(self) -> Any:
        """The model config with its dtype set to the quantization's compute dtype (bf16 for QLoRA)."""
        dtype = str(self.quantization.bnb_4bit_compute_dtype).removeprefix("torch.")
        return OmegaConf.merge(self.cfg, {"dtype": dtype})


@dataclass(frozen=True)
class Export:
    """How a trained model is written to `model/` and loaded back: `save` writes what needs the trained model in
    memory; the caller then drops it, and `finish` does what needs its memory, from the files (QLoRA's merge into
    a base reloaded in bf16: two copies of a 9B base do not fit)."""

    save: Callable[[Any, Any, Path, Base], None]
    load: Callable[[Path, Base], Any]
    finish: Callable[[Any, Path, Base], None] = lambda tokenizer, folder, base: None
    requires: str | None = None  # the adapter config key this export cannot work without (checked by its schema)


def free_memory() -> None:
    gc.collect()  # Lightning's trainer/module/callback cycles keep a dropped model alive until collected
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def save_pretrained(model: Any, tokenizer: Any, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    log.info("exported %s model to %s", "adapter" if is_adapter_folder(folder) else "full", folder)


def save_merged(model: Any, tokenizer: Any, folder: Path, base: Base) -> None:
    from peft import PeftModel

    save_pretrained(model.merge_and_unload() if isinstance(model, PeftModel) else model, tokenizer, folder)


def save_adapter(model: Any, tokenizer: Any, folder: Path, base: Base) -> None:
    save_pretrained(model, tokenizer, folder)


def save_adapter_for_merge(model: Any, tokenizer: Any, folder: Path, base: Base) -> None:
    save_pretrained(model, tokenizer, folder / MERGED_ADAPTER)


def merge_into_compute_dtype_base(tokenizer: Any, folder: Path, base: Base) -> None:
    """The saved adapter merged into the base reloaded unquantized in the compute dtype, as An et al. evaluate."""
    merged = attach_adapter(load_model(base.compute_dtype_cfg(), base.path), folder / MERGED_ADAPTER)
    save_merged(merged, tokenizer, folder, base)


def load_dense(folder: Path, base: Base) -> Any:
    return load_model(base.cfg, str(folder))


def load_dense_in_compute_dtype(folder: Path, base: Base) -> Any:
    return load_model(base.compute_dtype_cfg(), str(folder))


def load_adapter(folder: Path, base: Base) -> Any:
    return attach_adapter(base.load(), folder)


EXPORTS = Registry("adapter export")
EXPORTS["merge"] = Export(save_merged, load_dense)
EXPORTS["merge_bf16"] = Export(save_adapter_for_merge, load_dense_in_compute_dtype, merge_into_compute_dtype_base,
                               requires="quantization")
EXPORTS["adapter_only"] = Export(save_adapter, load_adapter, requires="lora")


def exporter(adapter: Any) -> Export:
    """The export `adapter.export` names (its schema checked it against the adapter before any training)."""
    return EXPORTS[adapter.export]


def is_adapter_folder(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file()


def attach_adapter(base: Any, folder: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, folder)
