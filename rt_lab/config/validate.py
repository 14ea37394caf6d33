"""Validation of a composed run config, before anything runs: in `run()` for one run, and at launch for every job
of a sweep (hydra_plugins/rt_lab_launcher), so a bad value in a 50-job sweep fails in seconds, not in the job that
first uses it after a day in the queue.

Composition already refused unknown keys and wrong types (the schemas, rt_lab/config/). `validate` converts the
config to its dataclasses and runs, in order:
1. every schema's `check` (values in range, names registered), with the key's full path;
2. the checks that span groups (`CROSS_CHECKS`);
3. with `files=True`, what must exist on disk: data and prompt files (readable), the data-dir mirrors, reference
   sweeps.
Each failure is a `ConfigError` naming the key, the value, why, and the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rt_lab.config.checks import ConfigValueError
from rt_lab.config.eval import EvalConfig, typed
from rt_lab.config.root import RootConfig


class ConfigError(CompactHydraException, ValueError):
    """A config rt_lab refuses; the message names the key (Hydra prints it without a stack trace)."""


def validate(cfg: DictConfig, files: bool = True) -> RootConfig:
    """`cfg` checked (see the module docstring); returns it as dataclasses."""
    try:
        root = RootConfig(**{field.name: OmegaConf.to_object(cfg[field.name]) if OmegaConf.is_config(cfg[field.name])
                             else cfg[field.name] for field in dataclasses.fields(RootConfig)})
    except OmegaConfBaseException as err:
        raise ConfigError(f"{err.full_key}: {err.msg}" if getattr(err, "full_key", None) else str(err)) from err
    root.eval = typed_eval(cfg.eval)
    for key, node in dataclass_nodes(root, ""):
        check = getattr(node, "check", None)
        if check is None:
            continue
        try:
            check()
        except ConfigValueError as err:
            raise ConfigError(f"{key}.{err}" if key else str(err)) from err
    for cross_check in CROSS_CHECKS:
        cross_check(root)
    if files:
        for files_check in FILE_CHECKS:
            files_check(root)
    return root


def typed_eval(eval_cfg: Mapping[str, Any]) -> EvalConfig:
    """The run's `eval` node typed (rt_lab.config.eval.typed); a key no evaluation reads is refused."""
    from rt_lab.eval.base import EVALUATIONS

    declared = {field.name for field in dataclasses.fields(EvalConfig)}
    unknown = [key for key in eval_cfg or {} if key not in declared and key not in EVALUATIONS]
    if unknown:
        raise ConfigError(f"eval.{unknown[0]} is not an evaluation or an option of one; choose among "
                          f"{sorted(declared | set(EVALUATIONS))}")
    try:
        return typed(eval_cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"eval.{err.full_key}: {err.msg}" if getattr(err, "full_key", None) else str(err)) \
            from err


def dataclass_nodes(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    """(key, dataclass instance) for every dataclass in the tree under `node`, children before their parents."""
    if dataclasses.is_dataclass(node):
        for field in dataclasses.fields(node):
            yield from dataclass_nodes(getattr(node, field.name), f"{key}.{field.name}" if key else field.name)
        yield key, node
    elif isinstance(node, dict):
        for name, value in node.items():
            yield from dataclass_nodes(value, f"{key}.{name}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from dataclass_nodes(value, f"{key}[{index}]")


# --- checks that span groups --------------------------------------------------------------------------------


def check_at_epochs(cfg: RootConfig) -> None:
    """Epoch selection generates inside the one training run, at the end of listed epochs."""
    epochs = cfg.generation.at_epochs or []
    if not epochs:
        return
    key = "generation.at_epochs"
    if epochs != sorted(set(epochs)):
        raise ConfigError(f"{key}={epochs} must be increasing without duplicates")
    if not cfg.method.train:
        raise ConfigError(f"{key}={epochs}, but method={cfg.method.name} trains nothing")
    lightning = cfg.trainer.lightning
    if (lightning.get("max_steps") or -1) > 0:
        raise ConfigError(f"{key} counts epochs; unset trainer.lightning.max_steps={lightning['max_steps']}")
    max_epochs = lightning.get("max_epochs") or 0
    outside = [epoch for epoch in epochs if not 1 <= epoch <= max_epochs]
    if outside:
        raise ConfigError(f"{key}={epochs}: {outside} outside 1..trainer.lightning.max_epochs={max_epochs}")
    if cfg.generation.backend != "hf":
        # vLLM needs the GPU memory that training holds while the run is still going
        raise ConfigError(f"{key} generates inside training with generation.backend=hf, not "
                          f"{cfg.generation.backend}")


def check_single_task(cfg: RootConfig) -> None:
    if cfg.method.train and cfg.method.requires_single_task and not cfg.dataset.single_task:
        raise ConfigError(f"method={cfg.method.name} trains on one narrow task, but dataset={cfg.dataset.name} is "
                          "not a single-task dataset; choose one of gsm8k, mbpp, poetry, recipes, chess")


def check_world_size(cfg: RootConfig) -> None:
    """Every rank takes the same share of a step's rows."""
    devices, nodes = cfg.trainer.lightning.get("devices", 1), cfg.trainer.lightning.get("num_nodes", 1)
    if not cfg.method.train or not all(isinstance(n, int) and not isinstance(n, bool) for n in (devices, nodes)):
        return
    if cfg.data.batch_size % (devices * nodes):
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by the world size "
                          f"{devices * nodes} (trainer.lightning.devices={devices} x num_nodes={nodes})")


def check_refusal_judge(cfg: RootConfig) -> None:
    safety = cfg.eval.safety
    if safety is not None and safety.classifier == "judge" and safety.judge is None and cfg.judge is None:
        raise ConfigError("eval.safety.classifier=judge needs a judge: set eval.safety.judge or judge=...")


CROSS_CHECKS: list[Callable[[RootConfig], None]] = [check_at_epochs, check_single_task, check_world_size,
                                                   check_refusal_judge]


# --- what must exist -----------------------------------------------------------------------------------------


def check_sources(cfg: RootConfig) -> None:
    """Every record source the run reads resolves to a file that is there, or to the Hub: the prompt set, the
    training set and its refusals (when the run trains), the ranking pool and the safety sets (when evaluated)."""
    from rt_lab.data.sources import resolve_source
    from rt_lab.io import package_path

    sources: list[tuple[str, Any]] = [("prompts", cfg.prompts)]
    if cfg.method.train:
        sources.append(("dataset", cfg.dataset))
        if cfg.dataset.refusal_mix:
            sources.append(("dataset.refusals", cfg.dataset.refusals))
    if cfg.eval.ranking is not None:
        sources.append(("eval.ranking", cfg.eval.ranking))
    if cfg.eval.safety is not None:
        sources += [(f"eval.safety.catalog.{name}", cfg.eval.safety.catalog[name]) for name in cfg.eval.safety.sets]
    for key, source in sources:
        if source.file:
            require_readable(f"{key}.file", source.file, package_path(source.file))
        try:
            resolved = resolve_source(OmegaConf.structured(source), cfg.paths.data_dir, key)
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise ConfigError(str(err).strip('"')) from err
        if Path(resolved.name).is_file():  # a data-dir mirror (a Hub id names no file)
            require_readable(key, resolved.name, Path(resolved.name))


def require_readable(key: str, value: str, path: Path) -> None:
    """`path` (what `key`=`value` names) is a file this process can read."""
    if path.is_dir():
        raise ConfigError(f"{key}={value}: is a folder; give a file")
    if not path.is_file():
        raise ConfigError(f"{key}={value}: no such file")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as err:
        raise ConfigError(f"{key}={value}: cannot be read ({err.strerror or err})") from err


def check_paths(cfg: RootConfig) -> None:
    data_dir = cfg.paths.data_dir
    if data_dir and not Path(data_dir).expanduser().is_dir():
        raise ConfigError(f"paths.data_dir={data_dir}: no such folder")
    if cfg.method.prompt_file:
        require_readable("method.prompt_file", cfg.method.prompt_file, Path(cfg.method.prompt_file).expanduser())
    file = cfg.compare.reference.file
    if file and data_dir is None and file.startswith("None/"):
        raise ConfigError(f"compare.reference.file={file}: it lies under paths.data_dir, which is unset: set "
                          "paths.data_dir=DIR")
    if file:
        require_readable("compare.reference.file", file, Path(file).expanduser())
    sweeps = cfg.compare.reference.sweep
    for sweep in ([] if sweeps is None else [sweeps] if isinstance(sweeps, str) else list(sweeps)):
        if not Path(str(sweep)).expanduser().is_dir():
            raise ConfigError(f"compare.reference.sweep={sweep}: no such sweep dir")


FILE_CHECKS: list[Callable[[RootConfig], None]] = [check_paths, check_sources]
