"""The whole run config: one field per config group (conf/<group>/), each typed by its group's schema; the
checks that span groups live in rt_lab.config.validate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from rt_lab.config.adapter import AdapterConfig
from rt_lab.config.compare import CompareConfig
from rt_lab.config.data import DataConfig
from rt_lab.config.dataset import DatasetConfig
from rt_lab.config.generation import GenerationConfig
from rt_lab.config.logger import LoggerConfig
from rt_lab.config.method import MethodConfig
from rt_lab.config.model import ModelConfig
from rt_lab.config.paths import PathsConfig
from rt_lab.config.rules import RulesConfig
from rt_lab.config.source import PromptsConfig
from rt_lab.config.trainer import TrainerConfig

RUN_NAME = ("${model.name}-${method.name}${rt_lab.rules_suffix:${rules.enabled}}-${dataset.name}"
            "${rt_lab.refined_suffix:${oc.select:dataset.refine.name,null}}-seed${trainer.seed}")


@dataclass
class RunConfig:
    name: str = RUN_NAME
    """The AlpacaEval `generator` name of this run's outputs: model-method[rules]-dataset[-refined]-seedN."""


@dataclass
class RootConfig:
    paths: PathsConfig = MISSING
    """Where things are."""
    model: ModelConfig = MISSING
    """The model a run starts from."""
    dataset: DatasetConfig = MISSING
    """The training set."""
    rules: RulesConfig = MISSING
    """The rule head."""
    method: MethodConfig = MISSING
    """What is trained and where the loss is."""
    template: Any = MISSING
    """How conversations become text: a TagTemplateConfig or a ChatTemplateConfig (template/)."""
    adapter: AdapterConfig = MISSING
    """What training updates, and how the model is saved."""
    data: DataConfig = MISSING
    """Rows as optimizer steps."""
    trainer: TrainerConfig = MISSING
    """Optimisation."""
    generation: GenerationConfig = MISSING
    """Decoding."""
    prompts: PromptsConfig = MISSING
    """The evaluation prompts."""
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    """Experiment loggers."""
    eval: dict[str, Any] = field(default_factory=dict)
    """Evaluations after generation: the built-in ones typed by EvalConfig (rt_lab/config/eval.py), and any a user
    registers (rt_lab.eval.base.EVALUATIONS) with its own options."""
    judge: Optional[Any] = None
    """The pairwise judge: an OpenAIJudgeConfig or a LocalJudgeConfig (judge/)."""
    compare: CompareConfig = MISSING
    """The end-of-sweep comparison."""
    run: RunConfig = field(default_factory=RunConfig)
    """Names of this run."""
