"""What every evaluation of a finished run shares: the registry, the context it gets, and the loop that runs the
switched-on ones, resumably.

An evaluation is a function `(EvalContext) -> dict[str, float | int]` registered under the name of its config key:
`@register_evaluation("ranking")` runs when `eval.ranking` is set (a mapping of its options, or a non-empty
list). Its metrics go to `<run_dir>/eval/<name>.json` (written atomically; a rerun in the same dir skips finished
evaluations) and to the run's loggers as `eval/<name>/<metric>`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rt_lab.config.root import RootConfig
from rt_lab.io import atomic_write_json
from rt_lab.layout import RunDir
from rt_lab.registry import Registry

log = logging.getLogger(__name__)

EVALUATIONS = Registry("evaluation")
register_evaluation = EVALUATIONS.register

Metrics = dict[str, float | int]


@dataclass
class EvalContext:
    cfg: RootConfig  # the whole run config; an evaluation's own options are cfg.eval.<its name>
    tokenizer: Any
    template: Any  # rt_lab.data.templates.Template of the run
    run_dir: Path
    model: Callable[[], Any]  # the run's model (trained, or the base for methods that train nothing), in eval mode,
    #                           loaded on first call (a vLLM run has not loaded it for generation)
    answer: Any  # the run's rt_lab.generate.decode.BatchGenerator (rule head included)

    def out_dir(self, name: str) -> Path:
        """Where evaluation `name` keeps its working files (generations, per-item scores)."""
        return RunDir(self.run_dir).eval_dir(name)


def switched_on(cfg: RootConfig) -> list[str]:
    """Names of the evaluations `cfg.eval` switches on, in registry order (rt_lab.config.validate refused the
    keys that are neither an evaluation nor an option of one)."""
    settings = cfg.get("eval") or {}
    return [name for name in EVALUATIONS if settings.get(name)]


def run_evaluations(ctx: EvalContext, loggers: list[Any]) -> dict[str, Metrics]:
    """Run every switched-on evaluation not finished before; log all their metrics."""
    results: dict[str, Metrics] = {}
    for name in switched_on(ctx.cfg):
        path = RunDir(ctx.run_dir).eval_metrics(name)
        if path.is_file():
            log.info("evaluation %s already finished: %s", name, path)
            results[name] = json.loads(path.read_text(encoding="utf-8"))
        else:
            log.info("evaluation %s", name)
            results[name] = EVALUATIONS[name](ctx)
            atomic_write_json(path, results[name])
        flat = {f"eval/{name}/{key}": value for key, value in results[name].items()
                if isinstance(value, (int, float))}
        for logger in loggers:
            logger.log_metrics(flat)
        log.info("eval/%s: %s", name, json.dumps(results[name]))
    return results
