"""Writing a trained model where generation (now or after a requeue) and users can load it, and loading it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


def export_model(model: Any, tokenizer: Any, folder: Path, merge: bool) -> Path:
    """A full model folder (adapters merged in) or, with `merge=False`, a peft adapter folder."""
    from peft import PeftModel

    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel) and merge:
        model = model.merge_and_unload()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    log.info("exported %s model to %s", "adapter" if (folder / ADAPTER_CONFIG).exists() else "full", folder)
    return folder


def is_adapter_folder(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file()


def attach_adapter(base: Any, folder: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, folder)
