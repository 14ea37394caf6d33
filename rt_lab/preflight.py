"""What a sweep will need before it ends, checked at launch before the first job starts (the launcher's plan, a dry
run too), so a missing key or a missing reference run stops the sweep now, not after days of training.

It builds on the validation (rt_lab.config.validate), which has already checked every job's values and files:
- every judge the sweep uses (the comparison's, dataset.refine's backend, eval.safety's): its key variable set and,
  behind a server, the server answering (one cheap request per server; `hydra.launcher.reach_servers=false` skips
  the requests where the launch has no network; the comparison checks its judge again before it judges);
- the comparison's pairs: every job finds its reference among this sweep's jobs and, with
  compare.reference.sweep, the runs and planned jobs of those sweeps; one job with several where
  compare.reference.multiple=error is found now too;
- the dirs jobs share (paths.cache_dir, paths.refine_dir): writable; the sweeper checks the sweep dir.
Each problem names the job (or the comparison) and the fix."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from rt_lab.compare.runs import Run, find_runs, flatten, matches, reference_candidates, reference_sweep_dirs
from rt_lab.compare.runs import reference_pool as named_pool
from rt_lab.config.checks import ConfigValueError
from rt_lab.config.root import RootConfig
from rt_lab.layout import SweepDir


@dataclass
class PlannedJob:
    """A job of the sweep being launched, composed as it will run."""

    number: int
    label: str  # "#3 (method=rt dataset=lima)"
    config: DictConfig  # composed, with its hydra node
    root: RootConfig  # validated
    done: bool  # finished before this launch: compared, and a reference, but not run again

    def as_run(self) -> Run:
        return Run(Path(str(self.config.hydra.runtime.output_dir)), self.config,
                   [str(o) for o in self.config.hydra.overrides.task])


@dataclass
class Preflight:
    """The problems found (each names where and the fix) and notes (what the comparison will skip)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # what passed, for the launch's printout


def judge_problem(key: str, judge: Any, reach_server: bool) -> str | None:
    """What a judge config (a judge/ schema instance) lacks to be used, or None."""
    preflight = getattr(judge, "preflight", None)
    if preflight is None:
        return None
    try:
        preflight(reach_server)
    except ConfigValueError as err:
        return f"{key}.{err}"
    return None


def job_judges(root: RootConfig) -> list[tuple[str, Any]]:
    """(key, judge config) of every judge a job uses while it runs: the refiner of its training responses and the
    refusal judge of its safety evaluation."""
    judges = []
    if root.method.train and root.dataset.refine is not None:
        judges.append(("dataset.refine.backend", root.dataset.refine.backend))
    safety = root.eval.safety
    if safety is not None and safety.classifier == "judge":
        judges.append(("eval.safety.judge", safety.judge) if safety.judge is not None else ("judge", root.judge))
    return judges


def check_judges(found: Preflight, uses: Sequence[tuple[str, str, Any]], reach_servers: bool) -> None:
    """`uses`: (who, key, judge config); each distinct judge checked once, its problem named with every user."""
    by_judge: dict[str, list[tuple[str, str, Any]]] = {}
    for use in uses:
        by_judge.setdefault(repr(use[2]), []).append(use)
    for users in by_judge.values():
        who, key, judge = users[0]
        problem = judge_problem(key, judge, reach_servers)
        named = who if len(users) == 1 else f"{who} and {len(users) - 1} more ({', '.join(u[0] for u in users[1:4])}" \
            f"{', ...' if len(users) > 4 else ''})"
        if problem:
            found.problems.append(f"{named}: {problem}")
        else:
            found.checked.append(f"{key} ({type(judge).__name__}) for {named}"
                                 f"{'' if reach_servers else ', server not contacted'}")


def reference_pool(sweep_config: DictConfig, jobs: Sequence[PlannedJob], compose: Callable[[list[str], int], DictConfig],
                   found: Preflight) -> list[tuple[Run, str]]:
    """Every run the comparison may take as a reference, named as the comparison names it: this sweep's jobs, and
    the runs and not yet started jobs of the reference sweeps (compare.reference.sweep; validated to exist)."""
    others: dict[Path, list[Run]] = {}
    for sweep in reference_sweep_dirs(sweep_config.compare):
        runs = find_runs(sweep)
        started = {run.dir.name for run in runs}
        jobs_file = SweepDir(sweep).jobs
        planned = json.loads(jobs_file.read_text(encoding="utf-8")) if jobs_file.is_file() else {}
        runs += [Run(sweep / number, compose(list(overrides), int(number)), list(overrides))
                 for number, overrides in planned.items() if number not in started]
        if not runs:
            found.problems.append(f"compare.reference.sweep={sweep}: holds no runs and no planned jobs (jobs.json); "
                                  "give the dir of the sweep that trains the references")
        others[sweep] = runs
    return named_pool([job.as_run() for job in jobs], others)


def check_pairs(found: Preflight, sweep_config: DictConfig, jobs: Sequence[PlannedJob],
                compose: Callable[[list[str], int], DictConfig]) -> bool:
    """Whether the comparison will judge anything; problems for jobs whose reference cannot come."""
    reference = sweep_config.compare.reference
    if reference.get("file"):
        return bool(jobs)
    select = flatten(reference.select)
    pool = [(run, name) for run, name in reference_pool(sweep_config, jobs, compose, found) if matches(run, select)]
    wanted = ", ".join(f"{key}={value}" for key, value in select.items())
    elsewhere = "this sweep or " + ", ".join(str(d) for d in reference_sweep_dirs(sweep_config.compare)) \
        if reference.get("sweep") else "this sweep"
    paired = 0
    for job in jobs:
        run = job.as_run()
        if matches(run, select):
            continue
        candidates = reference_candidates(run, pool, reference.match)
        keys = ", ".join(f"{key}={run.value(key)}" for key in reference.match)
        if not candidates:
            line = f"job {job.label}: its reference ({wanted}, {keys}) is not among the runs or jobs of {elsewhere}"
            if reference.get("sweep"):
                found.problems.append(f"{line}; add it to the sweep, or name the sweep that has it "
                                      "(compare.reference.sweep=DIR)")
            else:
                found.notes.append(f"{line}: the comparison will skip it (compare.reference.sweep=DIR looks in "
                                   "another sweep)")
        elif len(candidates) > 1 and reference.multiple == "error":
            found.problems.append(f"job {job.label}: {len(candidates)} runs will qualify as its reference "
                                  f"({', '.join(name for _, name in candidates)}); add keys to "
                                  f"compare.reference.match (now {list(reference.match)}), or set "
                                  "compare.reference.multiple=all")
        else:
            paired += 1
    if paired:
        found.checked.append(f"references: {paired} job(s) paired ({wanted})")
    return paired > 0


def writable(path: Path) -> str | None:
    """None when files can be created in `path` (created if missing), else why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".rt_lab-preflight-"):
            pass
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


def check_dirs(found: Preflight, jobs: Sequence[PlannedJob]) -> None:
    """The dirs jobs share outside the sweep dir (the sweeper checked that one before composing any job)."""
    dirs: dict[str, list[Path]] = {}
    for job in jobs:
        if not job.done:
            for key in ("cache_dir", "refine_dir"):
                value = getattr(job.root.paths, key)
                if value:
                    dirs.setdefault(f"paths.{key}", []).append(Path(value).expanduser())
    for key, paths in dirs.items():
        for path in dict.fromkeys(paths):
            why = writable(path)
            if why:
                found.problems.append(f"{key}={path}: cannot write there ({why}); set paths.output_dir (or {key}) "
                                      "to a writable dir")


def preflight(sweep_config: DictConfig, jobs: Sequence[PlannedJob], compose: Callable[[list[str], int], DictConfig],
              reach_servers: bool) -> Preflight:
    """Everything the module docstring lists, for the sweep whose launch config is `sweep_config` and whose jobs
    (done ones included: the comparison pairs them too) are `jobs`; `compose(overrides, number)` composes a planned
    job of a reference sweep."""
    found = Preflight()
    check_dirs(found, jobs)
    uses = [(f"job {job.label}", key, judge) for job in jobs if not job.done for key, judge in job_judges(job.root)]
    if sweep_config.compare.get("at_sweep_end", True):
        judged = check_pairs(found, sweep_config, jobs, compose)
        epochs = any(job.root.generation.at_epochs for job in jobs)
        if judged or epochs:
            judge = OmegaConf.to_object(sweep_config.judge) if sweep_config.get("judge") is not None else None
            if judge is None:
                found.problems.append("the comparison at the sweep's end: it has pairs to judge but judge=null; "
                                      "set judge=openai (or hf_local)")
            else:
                uses.insert(0, ("the comparison at the sweep's end", "judge", judge))
    check_judges(found, uses, reach_servers)
    return found


def check_run_judges(root: RootConfig) -> None:
    """A run's own judges (`job_judges`) have their keys, before it trains: for a run outside a sweep, whose
    launch has no preflight. No server is contacted (a compute node may have no network at all)."""
    from rt_lab.config.validate import ConfigError

    for key, judge in job_judges(root):
        problem = judge_problem(key, judge, reach_server=False)
        if problem:
            raise ConfigError(problem)
