"""rt_lab's Hydra launchers: `sequential` (the default), and `slurm`, `slurm_ddp`, `local` on top of
hydra-submitit-launcher.

They make sweeps resumable: a job whose run dir holds the completion marker is not launched again, and
`dry_run=true` prints the job list without launching anything. Every job to run is validated first
(rt_lab.config.validate), then what the sweep needs before it ends is checked (rt_lab.preflight): one problem stops
the sweep before any job starts. The local launcher runs jobs in waves of
`max_parallel`, each with `cpus_per_task` threads: oversubscribed CPU threads slow every job down many times."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as SubmititLocal
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurm
from omegaconf import DictConfig, open_dict

from rt_lab.io import atomic_write_json
from rt_lab.layout import RunDir, SweepDir

Job = tuple[int, list[str]]  # (job number, overrides)


def consecutive_runs(jobs: Sequence[Job]) -> Iterator[list[Job]]:
    """Split jobs into runs of consecutive job numbers (the base launcher numbers a batch from one start)."""
    run: list[Job] = []
    for job in jobs:
        if run and job[0] != run[-1][0] + 1:
            yield run
            run = []
        run.append(job)
    if run:
        yield run


def record_jobs(sweep_dir: Path, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> None:
    """Add the jobs to `<sweep dir>/jobs.json` (number -> overrides), so a comparison of a partly finished
    sweep can name the jobs that never ran."""
    path = SweepDir(sweep_dir).jobs
    jobs = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for number, overrides in enumerate(job_overrides, start=initial_job_idx):
        jobs[str(number)] = list(overrides)
    atomic_write_json(path, jobs)


class ResumableSweep:
    """Mixin for a submitit launcher: plan the sweep, skip finished jobs, or only print the plan."""

    def __init__(self, dry_run: bool = False, reach_servers: bool = True, **params: Any) -> None:
        self.dry_run = dry_run
        self.reach_servers = reach_servers  # false: no request to judge servers at launch (checked before judging)
        super().__init__(**params)

    def job_config(self, overrides: Sequence[str], number: int) -> DictConfig:
        """The job's composed config, as the job will see it (its number and run dir set)."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra):
            config.hydra.job.num = number
            config.hydra.runtime.output_dir = str(Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir))
        return config

    def plan(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Job]:
        """The jobs to run. Every one is validated first (rt_lab.config.validate), then what the sweep needs
        before it ends is checked (rt_lab.preflight): a problem stops the sweep before any job starts, naming the
        job, the key and the fix."""
        from hydra.core.hydra_config import HydraConfig

        from rt_lab.config.validate import ConfigError, validate
        from rt_lab.preflight import PlannedJob, preflight

        todo: list[Job] = []
        planned: list[PlannedJob] = []
        lines, invalid = [], []
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            config = self.job_config(overrides, number)
            finished = RunDir(Path(config.hydra.runtime.output_dir)).done_marker.is_file()
            label = f"#{number} ({' '.join(filter_overrides(overrides))})"
            HydraConfig.instance().set_config(config)
            try:
                # a finished job's files were read already; the comparison still pairs it
                planned.append(PlannedJob(number, label, config, validate(config, files=not finished), finished))
            except ConfigError as err:
                if not finished:
                    invalid.append(f"  {label}: {err}")
            if not finished:
                todo.append((number, list(overrides)))
            lines.append(f"  #{number} [{'done' if finished else 'todo'}] {label.split(' ', 1)[1][1:-1]}")
        done = len(job_overrides) - len(todo)
        print(f"sweep {self.config.hydra.sweep.dir}: {len(job_overrides)} jobs, {done} done, {len(todo)} to run"
              + (" (dry run: nothing launched)" if self.dry_run else ""), *lines, sep="\n", flush=True)
        if invalid:
            raise ConfigError(f"{len(invalid)} of the {len(todo)} jobs to run have an invalid config; nothing was "
                              "launched:\n" + "\n".join(invalid))
        found = preflight(self.config, planned, self.job_config, self.reach_servers)
        print(*[f"preflight: {line}" for line in found.checked], *[f"note: {line}" for line in found.notes],
              sep="\n", flush=True)
        if found.problems:
            raise ConfigError(f"preflight: {len(found.problems)} problem(s) the sweep would meet before its end; "
                              "nothing was launched:\n" + "\n".join(f"  {problem}" for problem in found.problems))
        record_jobs(Path(str(self.config.hydra.sweep.dir)), job_overrides, initial_job_idx)
        return todo

    def wave_size(self) -> int | None:
        return None  # everything at once

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        # In the job process: torch takes every core by default, even where a scheduler granted fewer.
        threads = getattr(self, "params", {}).get("cpus_per_task")
        if threads:
            import torch

            torch.set_num_threads(threads)
        return super().__call__(*args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        todo = self.plan(job_overrides, initial_job_idx)
        if self.dry_run:
            return []
        size = self.wave_size() or max(len(todo), 1)
        results: list[JobReturn] = []
        for start in range(0, len(todo), size):
            for run in consecutive_runs(todo[start:start + size]):
                results.extend(super().launch([overrides for _, overrides in run], run[0][0]))
        return results


class SlurmLauncher(ResumableSweep, SubmititSlurm):
    """Unfinished jobs as SLURM arrays (`array_parallelism` caps how many run at once)."""


class LocalLauncher(ResumableSweep, SubmititLocal):
    """Jobs as local subprocesses, `max_parallel` at a time (default: cores / cpus_per_task)."""

    def __init__(self, max_parallel: int | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.max_parallel = max_parallel or max(1, (os.cpu_count() or 1) // (self.params.get("cpus_per_task") or 1))

    def wave_size(self) -> int:
        return self.max_parallel


class SequentialLauncher(ResumableSweep, BasicLauncher):
    """Hydra's basic launcher (jobs one after another in this process), resumable. The default."""
