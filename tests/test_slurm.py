"""rt_lab on a real SLURM cluster: `python launch.py -m hydra/launcher=slurm ...` submits real sbatch jobs.

Runs only where a cluster answers (CI starts a one-node one with `.ci/slurm-cluster.sh`; locally:
`.ci/slurm-cluster.sh install && .ci/slurm-cluster.sh start && eval "$(.ci/slurm-cluster.sh env)"`), and skips
otherwise. Every test launches into its own `hydra.sweep.dir` under tmp_path, so each has its own submitit folder
(`<sweep>/.submitit`): job ids restart at 1 on a fresh cluster, and a reused folder would return an old result.
Jobs still queued when a test ends are cancelled."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from helpers import REPO

START_HINT = ('start one: .ci/slurm-cluster.sh install && .ci/slurm-cluster.sh start && '
              'eval "$(.ci/slurm-cluster.sh env)"')


def cluster_unavailable() -> str | None:
    """Why no SLURM cluster can take the tests' jobs here, or None when one can."""
    if not (shutil.which("sbatch") and shutil.which("sinfo") and shutil.which("sacct")):
        return f"no SLURM client tools (sbatch, sinfo, sacct) on PATH; {START_HINT}"
    for command in (["sinfo", "-h", "-o", "%P"], ["sacct", "-n", "-X", "-o", "JobID"]):
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(command)}` timed out (SLURM_CONF={os.environ.get('SLURM_CONF')}); {START_HINT}"
        if result.returncode != 0:
            # sacct too: without accounting submitit can wait forever on a job that died without a result
            return (f"`{' '.join(command)}` failed (SLURM_CONF={os.environ.get('SLURM_CONF')}): "
                    f"{result.stderr.strip()[:200]}; {START_HINT}")
        partitions = [name.rstrip("*") for name in result.stdout.split()]  # "debug*": the default partition
        if command[0] == "sinfo" and "debug" not in partitions:
            return f"the cluster has no partition `debug` (partitions: {partitions})"
    return None


UNAVAILABLE = cluster_unavailable()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(UNAVAILABLE is not None, reason=f"SLURM: {UNAVAILABLE}")]

# A CPU node of .ci/slurm-cluster.sh: partition debug, no GPUs, one core and 1 GB per job.
SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.tasks_per_node=1", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
         "hydra.launcher.timeout_min=5"]
FAST = ["trainer=cpu", "model=tiny", "logger=csv", "data.batch_size=4", "data.micro_batch_size=2",
        "data.max_length=128", "dataset.limit=8", "generation.max_new_tokens=8", "prompts.limit=3"]
# The preemption job: 12 steps per epoch x 5 epochs of a wider tiny model (about 0.1 s per step on one core), so a
# USR2 sent a second after training starts lands mid-run; checkpoints only when preempted (and at the end).
PREEMPT = ["method=rt", "dataset=sample", "trainer=cpu", "model=tiny", "model.tiny.hidden_size=256",
           "model.tiny.intermediate_size=1024", "logger=csv", "dataset.limit=48", "data.batch_size=4",
           "data.micro_batch_size=1", "data.max_length=128", "trainer.lightning.max_epochs=5",
           "trainer.checkpoint_every_n_steps=1000", "generation.max_new_tokens=8", "prompts.limit=3"]
PREEMPT_AFTER_S = 1.0
TRAINING_STARTED = "trainable parameters:"  # rt_lab/train/module.py logs it in on_train_start, after the guard is armed
JOB_DIR_NAME = re.compile(r"(\d+)(?:_(\d+))?")  # submitit folders: <job id> or <array id>_<task>


def env() -> dict[str, str]:
    # One torch thread per job, like its one SLURM CPU: the node binds no cores (TaskPlugin=task/none), and the
    # reference run uses the same thread count, so both run the same kernels. SLURM jobs start in the test's tmp
    # dir (`python -m submitit.core._submit`): PYTHONPATH makes them import this checkout's rt_lab and launcher,
    # not whichever checkout is pip-installed.
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
                PYTHONPATH=pythonpath)


def launch(args: list[str], cwd: Path, timeout: float = 300) -> str:
    """Run launch.py to the end (a SLURM launch blocks until its jobs end); its stdout."""
    result = subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=cwd, env=env(),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    return result.stdout


def job_ids(sweep: Path) -> list[str]:
    """SLURM job ids of a sweep, from its submitit folder (`<job>` or `<array>_<task>` dirs)."""
    folder = sweep / ".submitit"
    if not folder.is_dir():
        return []
    # an array also has a `<array id>` dir holding only its sbatch script
    return sorted((p.name for p in folder.iterdir()
                   if JOB_DIR_NAME.fullmatch(p.name) and (p / f"{p.name}_submitted.pkl").is_file()),
                  key=lambda name: [int(part) for part in name.split("_")])


def cancel(sweep: Path) -> None:
    ids = sorted({name.split("_")[0] for name in job_ids(sweep)})
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


@pytest.fixture
def cancel_leftovers() -> Callable[[Path], Path]:
    """register(sweep) -> sweep: its jobs are cancelled when the test ends (finished jobs are unaffected)."""
    sweeps: list[Path] = []
    yield lambda sweep: sweeps.append(sweep) or sweep
    for sweep in sweeps:
        cancel(sweep)


def wait_for(what: str, check: Callable[[], object], timeout: float, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def accounting(job: str) -> list[tuple[str, str]]:
    """(job id, state) of every allocation of a job, requeued ones included (sacct -D), oldest first."""
    out = subprocess.run(["sacct", "-j", job, "-n", "-P", "-X", "-D", "-o", "JobID,State"], capture_output=True,
                         text=True, timeout=30).stdout
    return [tuple(line.split("|")[:2]) for line in out.splitlines() if line.strip()]


def wait_completed(job: str, allocations: int = 1) -> list[tuple[str, str]]:
    """The accounting records of a job once its last allocation shows COMPLETED (slurmdbd may lag a little)."""
    return wait_for(f"sacct to show job {job} COMPLETED",
                    lambda: (rows := accounting(job)) and len(rows) >= allocations and rows[-1][1] == "COMPLETED"
                    and rows, timeout=60, every=0.5)


def losses(metrics: Path) -> dict[int, float]:
    """train/loss by logged step, from a CSVLogger metrics.csv."""
    with metrics.open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/loss")]
    steps = [int(row["step"]) for row in rows]
    assert len(steps) == len(set(steps)), f"{metrics}: a step logged twice: {steps}"
    return {int(row["step"]): float(row["train/loss"]) for row in rows}


def file_stamps(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def without_comparison(stamps: dict[str, int]) -> dict[str, int]:
    return {path: stamp for path, stamp in stamps.items() if not path.startswith("comparison/")}


@pytest.fixture(scope="module")
def two_job_sweep(tmp_path_factory) -> Path:
    """`method=rt,it` through hydra/launcher=slurm, run once for the tests that only read it."""
    cwd = tmp_path_factory.mktemp("slurm_sweep")
    sweep = cwd / "sweep"
    try:
        out = launch(["-m", *SLURM, "method=rt,it", "dataset=sample", f"hydra.sweep.dir={sweep}", *FAST], cwd)
    finally:
        cancel(sweep)
    assert "2 jobs, 0 done, 2 to run" in out
    # the sweep ends with the comparison, in the submitting process (default judge: SmolLM2 here)
    assert "| tiny | rt | sample | - | method=it | 1 |" in out
    assert (sweep / "comparison" / "summary.csv").is_file() and (sweep / "comparison" / "win_rates.png").is_file()
    return sweep


def test_two_job_sweep_runs_as_slurm_jobs(two_job_sweep):
    sweep = two_job_sweep
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1"]
    generators = []
    for job in ("0", "1"):
        assert (sweep / job / "run.done").is_file()
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        outputs = json.loads((sweep / job / "model_outputs.json").read_text())
        assert len(outputs) == 3
        generators.append(outputs[0]["generator"])
    assert generators == ["tiny-rt-sample-seed1", "tiny-it-sample-seed1"]
    # one SLURM array, one task per job, both COMPLETED in the accounting DB
    ids = job_ids(sweep)
    assert len(ids) == 2 and [JOB_DIR_NAME.fullmatch(i).group(2) for i in ids] == ["0", "1"], ids
    array = JOB_DIR_NAME.fullmatch(ids[0]).group(1)
    assert JOB_DIR_NAME.fullmatch(ids[1]).group(1) == array
    for job_id in ids:
        assert wait_completed(job_id) == [(job_id, "COMPLETED")]
        log = (sweep / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()
        assert f"JobEnvironment(job_id={job_id}," in log and "Job completed successfully" in log


def test_relaunch_runs_only_unfinished_jobs(two_job_sweep, tmp_path, cancel_leftovers):
    sweep = cancel_leftovers(tmp_path / "sweep")
    shutil.copytree(two_job_sweep, sweep, symlinks=True)  # this test's own copy: the finished sweep stays intact
    command = ["-m", *SLURM, "method=rt,it", "dataset=sample", f"hydra.sweep.dir={sweep}", *FAST]
    before = job_ids(sweep)

    out = launch(command, tmp_path)
    assert "2 jobs, 2 done, 0 to run" in out
    assert job_ids(sweep) == before  # nothing submitted

    (sweep / "1" / "run.done").unlink()
    (sweep / "1" / "model_outputs.json").unlink()
    out = launch([*command, "hydra.launcher.dry_run=true"], tmp_path)
    assert "2 jobs, 1 done, 1 to run (dry run: nothing launched)" in out
    assert re.search(r"^  #0 \[done\] method=rt ", out, re.MULTILINE)
    assert re.search(r"^  #1 \[todo\] method=it ", out, re.MULTILINE)
    assert job_ids(sweep) == before

    stamps = file_stamps(sweep / "0")
    out = launch(command, tmp_path)
    assert "2 jobs, 1 done, 1 to run" in out
    (new,) = set(job_ids(sweep)) - set(before)
    assert wait_completed(new) == [(new, "COMPLETED")]
    assert (sweep / "1" / "run.done").is_file()
    assert json.loads((sweep / "1" / "model_outputs.json").read_text())[0]["generator"] == "tiny-it-sample-seed1"
    # job 0 did not run again: none of its files touched, none added, except its comparison with the rerun
    # reference, which the sweep's end rewrites
    assert without_comparison(file_stamps(sweep / "0")) == without_comparison(stamps)
    assert "| tiny | rt | sample |" in out
    assert "job_id=" + new in (sweep / ".submitit" / new / f"{new}_0_log.out").read_text()


@pytest.fixture(scope="module")
def preempted(tmp_path_factory) -> dict:
    """An uninterrupted reference run, and the same job on SLURM preempted with USR2 mid-training. Both use a
    fresh model cache: the reference builds the tiny model and the job loads it, the split of a fresh clone's CI,
    where a build that reseeded the global RNG once made every step after the first update differ."""
    root = tmp_path_factory.mktemp("slurm_preemption")
    reference = root / "reference"
    job_args = [*PREEMPT, f"paths.cache_dir={root / 'cache'}"]
    launch(["-m", *job_args, f"hydra.sweep.dir={reference}"], root)  # the default (sequential) launcher

    sweep = root / "sweep"
    job_dir = sweep / "0"
    command = [sys.executable, str(REPO / "launch.py"), "-m", *SLURM, "hydra.launcher.max_num_timeout=3",
               "hydra.launcher.signal_delay_s=30", *job_args, f"hydra.sweep.dir={sweep}"]
    with (root / "launcher.log").open("w") as launcher_log:
        launcher = subprocess.Popen(command, cwd=root, env=env(), stdout=launcher_log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    try:
        (job,) = wait_for("the job's submitit folder", lambda: job_ids(sweep), timeout=120)
        submitit_log = sweep / ".submitit" / job / f"{job}_0_log.out"
        launch_log = job_dir / "launch.log"
        wait_for(f"job {job} to train", lambda: launch_log.is_file() and TRAINING_STARTED in launch_log.read_text(),
                 timeout=180)
        assert subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True,
                              timeout=30).stdout.split() == ["RUNNING"]
        time.sleep(PREEMPT_AFTER_S)
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
        wait_for("submitit to requeue the job",
                 lambda: submitit_log.is_file() and "Exiting gracefully after preemption" in submitit_log.read_text(),
                 timeout=60)
        # the first run's processes are gone once the job is back in the queue: keep its metrics.csv now (the
        # requeued run starts 10+ s later)
        wait_for("the requeued job to be pending",
                 lambda: subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True,
                                        timeout=30).stdout.strip() == "PENDING", timeout=60, every=0.2)
        first_metrics = job_dir / "csv" / "metrics.csv"
        first_run = losses(first_metrics) if first_metrics.is_file() else {}
        assert launcher.wait(timeout=300) == 0, (root / "launcher.log").read_text()[-4000:]
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        cancel(sweep)
    saved = re.findall(r"saved (\S+) at step (\d+)", launch_log.read_text())
    return {"job": job, "sweep": sweep, "job_dir": job_dir, "reference": reference / "0",
            "submitit_log": submitit_log.read_text(), "launch_log": launch_log.read_text(), "saved": saved,
            "first_run": first_run, "final": losses(job_dir / "csv" / "metrics.csv"),
            "expected": losses(reference / "0" / "csv" / "metrics.csv"), "allocations": wait_completed(job, 2)}


def test_usr2_requeues_the_job_which_resumes_in_the_same_dir(preempted):
    job, job_dir = preempted["job"], preempted["job_dir"]
    total = len(preempted["expected"])
    # the guard saved last.ckpt at a step boundary strictly inside training, then submitit requeued
    assert len(preempted["saved"]) == 1, preempted["launch_log"][-3000:]
    (path, step), = preempted["saved"]
    assert Path(path) == job_dir / "checkpoints" / "last.ckpt"
    assert 0 < int(step) < total, f"USR2 landed at step {step} of {total}: make the preemption job's steps slower"
    assert preempted["allocations"] == [(job, "REQUEUED"), (job, "COMPLETED")]  # one SLURM job, run twice
    log = preempted["submitit_log"]
    assert "Caught signal SIGUSR2" in log and "Exiting gracefully after preemption" in log
    assert log.count(f"Starting with JobEnvironment(job_id={job},") == 2
    assert f"resuming training from {job_dir / 'checkpoints' / 'last.ckpt'}" in preempted["launch_log"]
    assert f"from {REPO / 'rt_lab' / 'sample_data'}" in preempted["launch_log"]  # the job ran this checkout's code
    # same job dir, finished there; no other dir
    assert sorted(p.name for p in preempted["sweep"].iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0"]
    assert (job_dir / "run.done").is_file()


def test_resumed_training_equals_an_uninterrupted_run(preempted):
    expected, final = preempted["expected"], preempted["final"]
    step = int(preempted["saved"][0][1])  # optimizer steps done when preempted: the resumed run starts at this one
    assert sorted(expected) == list(range(len(expected)))
    # the final metrics hold every step exactly once, with the very losses of the uninterrupted run: same weights,
    # data order, RNG state and thread count, so the same float operations in the same order
    assert final == expected
    # the first run logged every step up to the checkpoint, the step in flight included
    first = preempted["first_run"]
    assert sorted(first) == list(range(step))
    assert first == {s: expected[s] for s in first}
    # same model in the end: identical generations
    assert (json.loads((preempted["job_dir"] / "model_outputs.json").read_text())
            == json.loads((preempted["reference"] / "model_outputs.json").read_text()))


def test_the_final_metrics_keep_the_steps_before_the_preemption(preempted):
    assert set(preempted["first_run"]) <= set(preempted["final"])
