"""One run: refine the training responses (when `dataset.refine` is set) -> train (unless the method trains
nothing) -> export -> generate on the eval prompts (with the rule head when `rules.enabled` names rules) -> the
evaluations `eval` switches on. Win rates against a reference run are computed over the sweep: rt_lab.compare.

Each finished stage leaves a marker in the run dir, so a rerun in the same dir skips what is already done."""

from __future__ import annotations

import copy
import logging
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import lightning as L
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rt_lab.train.adapters import quantization_config
from rt_lab.generate.epochs import EpochSelection
from rt_lab.eval import EvalContext, run_evaluations
from rt_lab.train.export import Base, exporter, free_memory
from rt_lab.generate.backends import RunModel, make_generator
from rt_lab.generate.decode import generate_outputs
from rt_lab.io import read_records
from rt_lab.layout import RunDir
from rt_lab.loggers import finish_wandb
from rt_lab.models import load_model, load_tokenizer, resolve_path
from rt_lab.data.datasets import refined_dataset
from rt_lab.data.incontext import run_template
from rt_lab.data.prompts import load_prompts
from rt_lab.train.fit import train

log = logging.getLogger(__name__)



def build_loggers(cfg: Any) -> list[Any]:
    loggers = [instantiate(entry) for entry in (cfg.get("logger") or {}).values() if entry]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(resolved)
    return loggers


def run_base(cfg: Any) -> Base:
    return Base(cfg.model, resolve_path(cfg.model, cfg.paths.cache_dir), quantization_config(cfg.adapter))


def trained_model(cfg: Any, tokenizer: Any, template: Any, run_dir: Path, loggers: list[Any],
                  callbacks: Sequence[Any] = ()) -> RunModel | None:
    """The trained model, trained and exported now, or already when this run dir finished training. It always
    comes back from the export, so a first run and a rerun generate from the same weights. None in the processes
    other than rank 0 of a multi-process training run: rank 0 alone exports and generates."""
    layout = RunDir(run_dir)
    export_dir = layout.model
    base = run_base(cfg)
    export = exporter(cfg.adapter)  # a bad adapter.export fails now, not after training
    if layout.trained_marker.is_file():
        log.info("training already finished; loading %s", export_dir)
    else:
        # save must be the trained model's only holder, so that it can free it: the list hands it over
        trained = [train(cfg, base.load(), tokenizer, template, run_dir, loggers, callbacks)]
        if trained[0] is None:
            return None
        export.save(trained.pop(), tokenizer, export_dir, base)
        free_memory()
        layout.trained_marker.touch()
    return RunModel(export_dir, partial(export.load, export_dir, base))


def base_model(cfg: Any) -> RunModel:
    """The untrained model, for the methods that train nothing."""
    path = resolve_path(cfg.model, cfg.paths.cache_dir)
    return RunModel(path, partial(load_model, cfg.model, path))


def log_generation(outputs: Path, loggers: list[Any]) -> None:
    lengths = [len(record["output"]) for _, record in read_records(outputs)]
    for logger in loggers:
        logger.log_metrics({"generation/avg_length": sum(lengths) / max(len(lengths), 1),
                            "generation/empty": sum(length == 0 for length in lengths)})


def run(cfg: Any) -> Path:
    """Run the configured job in `cfg.paths.run_dir`; returns the path of `model_outputs.json`."""
    run_dir = Path(cfg.paths.run_dir)
    layout = RunDir(run_dir)
    if layout.done_marker.is_file():
        log.info("%s is complete; nothing to do", run_dir)
        return layout.outputs
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.trainer.seed, workers=True)
    tokenizer = load_tokenizer(cfg.model, resolve_path(cfg.model, cfg.paths.cache_dir))
    template = run_template(cfg)  # method=icl: its in-context prompt
    prompts = load_prompts(cfg.prompts, cfg.paths.data_dir)  # fail on a bad prompt file before training
    train_cfg = cfg
    if cfg.method.train and cfg.dataset.get("refine") and not layout.trained_marker.is_file():
        # refined now, before the model to train is loaded, so a local refiner never shares memory with it; the
        # training then reads the refined set's file like any dataset (the rest of the run keeps the config it
        # was launched with: its name, its saved config)
        train_cfg = copy.deepcopy(cfg)
        train_cfg.dataset = refined_dataset(cfg.dataset, cfg.paths.data_dir)
        free_memory()
    loggers = build_loggers(cfg)
    try:
        # generation.at_epochs: outputs at listed epochs of this one training run (rt_lab/generate/epochs.py)
        epochs = EpochSelection.build(cfg, tokenizer, template, prompts, run_base(cfg), exporter(cfg.adapter),
                                      run_dir, loggers)
        model = trained_model(train_cfg, tokenizer, template, run_dir, loggers, [epochs.callback()] if epochs else []) \
            if cfg.method.train else base_model(cfg)
        if model is None:
            log.info("training finished; rank 0 exports and generates")
            return layout.outputs
        answer = make_generator(cfg, tokenizer, model)
        outputs = generate_outputs(answer, tokenizer, template, prompts, cfg.model.bos, cfg.run.name, run_dir,
                                   cfg.generation.instruction_prefix)
        log_generation(outputs, loggers)
        if epochs:
            epochs.after_run(outputs)
        run_evaluations(EvalContext(cfg, tokenizer, template, run_dir, model, answer), loggers)
    finally:
        finish_wandb()
    layout.done_marker.touch()
    log.info("outputs: %s", outputs)
    return outputs
