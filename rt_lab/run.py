"""One run: train (unless the method trains nothing) -> export -> generate on the eval prompts (with the rule
head when `rules.enabled` names rules).

Each finished stage leaves a marker in the run dir, so a rerun in the same dir skips what is already done."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rt_lab.adapters import quantization_config
from rt_lab.export import attach_adapter, export_model, is_adapter_folder
from rt_lab.generate import generate_outputs
from rt_lab.loggers import finish_wandb
from rt_lab.models import load_model, load_tokenizer, resolve_path
from rt_lab.prompts import load_prompts
from rt_lab.rules import build_rules
from rt_lab.train import train

log = logging.getLogger(__name__)

TRAINED = "trained.done"


def build_loggers(cfg: Any) -> list[Any]:
    loggers = [instantiate(entry) for entry in (cfg.get("logger") or {}).values() if entry]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(resolved)
    return loggers


def trained_model(cfg: Any, tokenizer: Any, template: Any, run_dir: Path, loggers: list[Any]) -> Any:
    """The model to generate with: trained now, reloaded from this run's export, or the untrained base."""
    export_dir = run_dir / "model"
    quantization = quantization_config(cfg.adapter) if cfg.method.train else None
    base_path = resolve_path(cfg.model, cfg.paths.cache_dir)
    if not cfg.method.train:
        return load_model(cfg.model, base_path)
    if (run_dir / TRAINED).is_file():
        log.info("training already finished; loading %s", export_dir)
        if is_adapter_folder(export_dir):
            return attach_adapter(load_model(cfg.model, base_path, quantization), export_dir)
        return load_model(cfg.model, str(export_dir))
    model = train(cfg, load_model(cfg.model, base_path, quantization), tokenizer, template, run_dir, loggers)
    export_model(model, tokenizer, export_dir, merge=cfg.adapter.get("merge_on_export", True))
    (run_dir / TRAINED).touch()
    return model


def run(cfg: Any) -> Path:
    """Run the configured job in `cfg.paths.run_dir`; returns the path of `model_outputs.json`."""
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.trainer.seed, workers=True)
    tokenizer = load_tokenizer(cfg.model, resolve_path(cfg.model, cfg.paths.cache_dir))
    template = instantiate(cfg.template)
    prompts = load_prompts(cfg.prompts, cfg.paths.data_dir)  # fail on a bad prompt file before training
    loggers = build_loggers(cfg)
    try:
        model = trained_model(cfg, tokenizer, template, run_dir, loggers)
        outputs = generate_outputs(model, tokenizer, template, prompts, cfg.generation, cfg.model.bos,
                                   cfg.run.name, run_dir, build_rules(cfg.rules, tokenizer))
    finally:
        finish_wandb()
    log.info("outputs: %s", outputs)
    return outputs
