"""The runs of a sweep (job dirs as Hydra and rt_lab leave them) and their pairing with reference runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from rt_lab.config.compare import CompareConfig, ReferenceConfig
from rt_lab.io import read_records
from rt_lab.layout import RunDir, SweepDir
from rt_lab.overrides import override_key
from rt_lab.resolvers import rules_suffix


@dataclass
class Run:
    dir: Path
    cfg: DictConfig  # the job's composed config (.hydra/config.yaml)
    overrides: list[str]  # the job's command-line overrides (.hydra/overrides.yaml)

    @property
    def layout(self) -> RunDir:
        return RunDir(self.dir)

    @property
    def done(self) -> bool:
        return self.layout.done_marker.is_file()

    @property
    def name(self) -> str:
        return str(OmegaConf.select(self.cfg, "run.name"))

    def value(self, key: str) -> Any:
        """A config value for selectors; a config group's entry (`method`, `dataset`, ...) stands for its name."""
        node = OmegaConf.select(self.cfg, key)
        return node.get("name") if isinstance(node, DictConfig) else node

    def outputs(self) -> list[dict]:
        return [record for _, record in read_records(self.layout.outputs)]


@dataclass
class Reference:
    name: str
    records: list[dict]
    path: Path  # the model_outputs.json the records come from
    kind: str  # how it was chosen: "file <name>", or the selector ("method=it")
    run: Run | None = None  # None for a fixed reference file


def reference_file(file: str | Path) -> Reference:
    """A fixed reference (`compare.reference.file`), named by its generator."""
    path = Path(file).expanduser().resolve()
    records = [record for _, record in read_records(path)]
    name = str(records[0].get("generator", path.stem)) if records else path.stem
    return Reference(name, records, path, f"file {name}")


def load_run(run_dir: Path) -> Run:
    """A job dir's run: its saved config and command-line overrides."""
    job = RunDir(run_dir)
    overrides = list(OmegaConf.load(job.hydra_overrides)) if job.hydra_overrides.is_file() else []
    return Run(job.path, OmegaConf.load(job.hydra_config), [str(o) for o in overrides])


def find_runs(sweep_dir: Path) -> list[Run]:
    """Every job dir under `sweep_dir` (a dir holding `.hydra/config.yaml`), in job-number order."""
    return [load_run(job.path) for job in SweepDir(sweep_dir).run_dirs()]


def missing_jobs(sweep_dir: Path, runs: Sequence[Run]) -> list[str]:
    """Lines naming every planned job (jobs.json) that has not finished."""
    path = SweepDir(sweep_dir).jobs
    planned = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    finished = {run.dir.name for run in runs if run.done}
    started = {run.dir.name for run in runs}
    lines = [f"#{number} {'unfinished' if number in started else 'not started'}: {' '.join(overrides)}"
             for number, overrides in sorted(planned.items(), key=lambda item: int(item[0]))
             if number not in finished]
    lines += [f"{run.dir.name} unfinished: {' '.join(run.overrides)}" for run in runs
              if not run.done and run.dir.name not in planned]
    return lines


def flatten(mapping: Any, prefix: str = "") -> dict[str, Any]:
    """{method: it, dataset: {refusal_mix: 0}} -> {"method": "it", "dataset.refusal_mix": 0}"""
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, (dict, DictConfig)):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def matches(run: Run, select: dict[str, Any]) -> bool:
    return all(str(run.value(key)) == str(value) for key, value in select.items())


def reference_sweep_dirs(cfg: CompareConfig) -> list[Path]:
    """The dirs `compare.reference.sweep` names: none, one, or a list."""
    given = cfg.reference.sweep
    entries = [] if given is None else [given] if isinstance(given, (str, Path)) else list(given)
    return [Path(str(entry)).expanduser() for entry in entries]


def reference_sweeps(cfg: CompareConfig) -> dict[Path, list[Run]]:
    """The runs of every sweep `compare.reference.sweep` names, by sweep dir."""
    sweeps = {}
    for sweep in reference_sweep_dirs(cfg):
        if not sweep.is_dir():
            raise FileNotFoundError(f"compare.reference.sweep: {sweep}: no such sweep dir")
        sweeps[sweep] = find_runs(sweep)
        if not sweeps[sweep]:
            raise ValueError(f"compare.reference.sweep: {sweep} holds no runs (no <job>/.hydra/config.yaml)")
    return sweeps


def pair_runs(runs: Sequence[Run], cfg: CompareConfig, compared: Sequence[Run] | None = None
              ) -> tuple[list[tuple[Run, Reference]], list[str]]:
    """(run, reference) pairs of the `compared` runs (default: the finished ones; several pairs per run under
    `reference.multiple=all`), and lines naming what is missing: a run's reference, or some of its references,
    unfinished or not found. Reference candidates: the sweep's own `runs` and those of `reference.sweep`."""
    compared = [run for run in runs if run.done] if compared is None else list(compared)
    if cfg.reference.get("file"):
        reference = reference_file(cfg.reference.file)
        return [(run, reference) for run in compared], []
    select = flatten(cfg.reference.select)
    kind = ", ".join(f"{key}={value}" for key, value in select.items())
    others = reference_sweeps(cfg)
    pool = [(other, name) for other, name in reference_pool(runs, others) if matches(other, select)]
    loaded: dict[Path, Reference] = {}
    pairs, notes = [], []
    for run in compared:
        if matches(run, select):
            continue
        candidates = reference_candidates(run, pool, cfg.reference.match)
        finished = usable_references(run, candidates, cfg.reference)
        for other, name in finished:
            if other.dir not in loaded:
                loaded[other.dir] = Reference(name, reference_outputs(other, name), other.layout.outputs, kind, other)
            pairs.append((run, loaded[other.dir]))
        note = missing_references(run, candidates, finished, select, cfg.reference.match, others)
        if note:
            notes.append(note)
    return pairs, notes


def reference_candidates(run: Run, pool: Sequence[tuple[Run, str]], keys: Sequence[str]) -> list[tuple[Run, str]]:
    """The runs of `pool` (with their names) that have `run`'s values at the `keys` to match."""
    wanted = {key: run.value(key) for key in keys}
    return [(other, name) for other, name in pool
            if all(str(other.value(key)) == str(value) for key, value in wanted.items())]


def usable_references(run: Run, candidates: Sequence[tuple[Run, str]], cfg: ReferenceConfig) -> list[tuple[Run, str]]:
    """The finished candidates `run` is compared with: an error where several qualify and `multiple=error`, or
    where two share a name (their tables and files would collide)."""
    done = [(other, name) for other, name in candidates if other.done]
    dirs = [str(other.dir) for other, _ in done]
    if len(done) > 1 and cfg.multiple == "error":
        raise ValueError(f"{run.dir}: {len(done)} runs qualify as its reference ({dirs}); add keys to "
                         f"compare.reference.match (now {list(cfg.match)}), or set compare.reference.multiple=all "
                         "to compare with each (mean ± std over them)")
    names = [name for _, name in done]
    if len(set(names)) < len(names):
        raise ValueError(f"{run.dir}: its references {dirs} share names ({names}); give them distinct run.name "
                         "values, or reference sweep dirs distinct names")
    return done


def missing_references(run: Run, candidates: Sequence[tuple[Run, str]], finished: Sequence[tuple[Run, str]],
                       select: dict[str, Any], keys: Sequence[str], others: dict[Path, list[Run]]) -> str | None:
    """A line saying what `run` lacks: some references unfinished, or none finished (unfinished, or not found and
    where it was looked for); None when it lacks nothing."""
    if finished and len(finished) < len(candidates):
        return (f"{run.name} ({run.dir.name}): compared with {len(finished)} of its {len(candidates)} references; "
                f"unfinished: {[str(other.dir) for other, _ in candidates if not other.done]}")
    if finished:
        return None
    looked = f"this sweep or {', '.join(str(d) for d in others)}" if others else \
        "this sweep (compare.reference.sweep=DIR looks in another)"
    state = "is unfinished" if candidates else f"is not in {looked}"
    where = ", ".join(f"{key}={value}" for key, value in {**select, **{key: run.value(key) for key in keys}}.items())
    return f"{run.name} ({run.dir.name}): its reference ({where}) {state}"


def reference_pool(runs: Sequence[Run], others: dict[Path, list[Run]]) -> list[tuple[Run, str]]:
    """Every reference candidate with the name it gets in tables and file names: a run of the sweep itself by
    its run.name, one from another sweep as `<run.name>@<sweep dir name>/<job>`, so that two references sharing a
    generator name (a rerun of the same IT sweep, or one in both sweeps) never share a column or a vs_*.json."""
    pool = {run.dir.resolve(): (run, run.name) for run in runs}
    for sweep, found in others.items():
        for run in found:
            pool.setdefault(run.dir.resolve(), (run, f"{run.name}@{sweep.name}/{run.dir.relative_to(sweep)}"))
    return list(pool.values())


def reference_outputs(run: Run, name: str) -> list[dict]:
    path = run.layout.outputs
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the reference run {name} is finished but has no {path.name}")
    return run.outputs()


SHOWN = ("model", "method", "dataset", "trainer.seed", "rules.enabled")  # the table's own columns


def varying_overrides(runs: Sequence[Run]) -> set[str]:
    """Override keys whose values differ between the runs (e.g. a swept refusal mix), besides the table's own
    columns; overrides every run shares say nothing about a row."""
    values: dict[str, set[str]] = {}
    for run in runs:
        given = {override_key(o): o for o in run.overrides}
        for key in {override_key(o) for other in runs for o in other.overrides}:
            values.setdefault(key, set()).add(given.get(key, ""))
    return {key for key, seen in values.items() if len(seen) > 1 and key not in SHOWN}


def describe(run: Run, varying: set[str]) -> dict[str, Any]:
    """The columns that place a run in the table: model, method (with its rules), dataset, seed, and the
    varying overrides (`setting`), which separate the groups averaged over seeds."""
    setting = [o for o in run.overrides if override_key(o) in varying]
    return {"model": run.value("model"), "method": f"{run.value('method')}{rules_suffix(run.value('rules.enabled'))}",
            "dataset": run.value("dataset"), "seed": run.value("trainer.seed"), "setting": " ".join(setting)}
