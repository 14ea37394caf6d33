"""One run, as named stages over one shared `RunContext`, in the order they run:

1. `refine`: rewrite the training responses (when `dataset.refine` is set), before any model loads;
2. `plan_epochs`: generation inside training at `generation.at_epochs` (rt_lab/generate/epochs.py);
3. `train`: train and export (unless the method trains nothing), or take the untrained model;
4. `generate`: answer the eval prompts (with the rule head when `rules.enabled` names rules);
5. `evaluate`: the evaluations `eval` switches on.

The config is validated first (rt_lab.config.validate), and the keys of the judges the run uses checked
(rt_lab.preflight). Each finished stage leaves a marker in the run dir, so a rerun in the same dir skips what is
already done. Win rates against a reference run are computed over the sweep:
rt_lab.compare."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rt_lab.config.validate import validate
from rt_lab.data.datasets import refined_dataset
from rt_lab.data.incontext import run_template
from rt_lab.data.prompts import Prompt, load_prompts
from rt_lab.eval import EvalContext, run_evaluations
from rt_lab.generate.backends import BatchGenerator, RunModel, make_generator
from rt_lab.generate.decode import generate_outputs
from rt_lab.generate.epochs import EpochSelection
from rt_lab.io import read_records
from rt_lab.layout import RunDir
from rt_lab.preflight import check_run_judges
from rt_lab.loggers import finish_wandb
from rt_lab.models import load_model, load_tokenizer, resolve_path
from rt_lab.train.adapters import quantization_config
from rt_lab.train.export import Base, exporter, free_memory
from rt_lab.train.fit import train as fit

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What the stages of one run share; each stage fills in what later ones read."""

    cfg: DictConfig
    layout: RunDir
    tokenizer: Any
    template: Any  # rt_lab.data.templates.Template, or method=icl's in-context prompt
    prompts: list[Prompt]
    dataset: DictConfig  # the training set: cfg.dataset, or the refined set `refine` wrote
    loggers: list[Any] = field(default_factory=list)
    epochs: EpochSelection | None = None
    model: RunModel | None = None  # None in the processes other than rank 0 of a multi-process training run
    answer: BatchGenerator | None = None
    outputs: Path | None = None


def run(cfg: DictConfig) -> Path:
    """Run the configured job in `cfg.paths.run_dir`; returns the path of `model_outputs.json`."""
    check_run_judges(validate(cfg))
    layout = RunDir(Path(cfg.paths.run_dir))
    if layout.done_marker.is_file():
        log.info("%s is complete; nothing to do", layout.path)
        return layout.outputs
    layout.path.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.trainer.seed, workers=True)
    ctx = RunContext(cfg, layout, load_tokenizer(cfg.model, resolve_path(cfg.model, cfg.paths.cache_dir)),
                     run_template(cfg), load_prompts(cfg.prompts, cfg.paths.data_dir), cfg.dataset)
    refine(ctx)
    ctx.loggers = build_loggers(cfg)
    try:
        for stage in STAGES:
            stage(ctx)
            if ctx.model is None and stage is train:
                log.info("training finished; rank 0 exports and generates")
                return layout.outputs
    finally:
        finish_wandb()
    layout.done_marker.touch()
    log.info("outputs: %s", ctx.outputs)
    return layout.outputs


def refine(ctx: RunContext) -> None:
    """Refined before the model to train loads, so a local refiner never shares memory with it; training then
    reads the refined set's file like any dataset (the run keeps its own name and saved config)."""
    cfg = ctx.cfg
    if cfg.method.train and cfg.dataset.refine and not ctx.layout.trained_marker.is_file():
        ctx.dataset = refined_dataset(cfg.dataset, cfg.paths.data_dir)
        free_memory()


def plan_epochs(ctx: RunContext) -> None:
    from rt_lab.compare.epoch_selection import run_epoch_judge

    ctx.epochs = EpochSelection.build(ctx.cfg, ctx.tokenizer, ctx.template, ctx.prompts, run_base(ctx.cfg),
                                      exporter(ctx.cfg.adapter), ctx.layout.path, ctx.loggers,
                                      partial(run_epoch_judge, ctx.cfg, ctx.layout.path))


def train(ctx: RunContext) -> None:
    """The trained model, trained and exported now, or already when this run dir finished training; it always
    comes back from the export, so a first run and a rerun generate from the same weights. A method that trains
    nothing takes the untrained model."""
    cfg, layout = ctx.cfg, ctx.layout
    if not cfg.method.train:
        ctx.model = base_model(cfg)
        return
    base = run_base(cfg)
    export = exporter(cfg.adapter)
    if layout.trained_marker.is_file():
        log.info("training already finished; loading %s", layout.model)
    else:
        trained = fit(cfg, base.load(), ctx.tokenizer, ctx.template, layout.path, ctx.loggers,
                      [ctx.epochs.callback()] if ctx.epochs else [], dataset=ctx.dataset)
        if trained is None:
            ctx.model = None
            return
        export.save(trained, ctx.tokenizer, layout.model, base)
        del trained  # its memory goes before `finish` may load another copy of the base
        free_memory()
        export.finish(ctx.tokenizer, layout.model, base)
        layout.trained_marker.touch()
    ctx.model = RunModel(layout.model, partial(export.load, layout.model, base))


def generate(ctx: RunContext) -> None:
    cfg = ctx.cfg
    ctx.answer = make_generator(cfg, ctx.tokenizer, ctx.model)
    ctx.outputs = generate_outputs(ctx.answer, ctx.tokenizer, ctx.template, ctx.prompts, cfg.model.bos, cfg.run.name,
                                   ctx.layout.path, cfg.generation.instruction_prefix)
    lengths = [len(record["output"]) for _, record in read_records(ctx.outputs)]
    for logger in ctx.loggers:
        logger.log_metrics({"generation/avg_length": sum(lengths) / max(len(lengths), 1),
                            "generation/empty": sum(length == 0 for length in lengths)})
    if ctx.epochs:
        ctx.epochs.after_run(ctx.outputs)


def evaluate(ctx: RunContext) -> None:
    run_evaluations(EvalContext(ctx.cfg, ctx.tokenizer, ctx.template, ctx.layout.path, ctx.model, ctx.answer),
                    ctx.loggers)


STAGES: Sequence[Callable[[RunContext], None]] = (plan_epochs, train, generate, evaluate)


def build_loggers(cfg: DictConfig) -> list[Any]:
    loggers = [instantiate(entry) for entry in (cfg.get("logger") or {}).values() if entry]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(resolved)
    return loggers


def run_base(cfg: DictConfig) -> Base:
    return Base(cfg.model, resolve_path(cfg.model, cfg.paths.cache_dir), quantization_config(cfg.adapter))


def base_model(cfg: DictConfig) -> RunModel:
    """The untrained model, for the methods that train nothing."""
    path = resolve_path(cfg.model, cfg.paths.cache_dir)
    return RunModel(path, partial(load_model, cfg.model, path))
