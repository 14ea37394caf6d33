"""The preflight at launch (rt_lab/preflight.py): what a sweep needs before it ends is checked before any job
starts, in a dry run too: judge keys and servers (a real HTTP server on loopback; the canned judge stands in for a
paid API's model), reference runs, writable dirs. Launches run as a user types them, in fresh processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from helpers import REPO, outputs_for, write_run
from judge_server import KEY_ENV, SECRET, CannedJudgeServer, judge_overrides


@pytest.fixture
def canned_judge(monkeypatch: pytest.MonkeyPatch) -> Iterator[CannedJudgeServer]:
    monkeypatch.setenv(KEY_ENV, SECRET)
    server = CannedJudgeServer()
    yield server
    server.close()


def launched(args: list[str], cwd: Path, unset: tuple[str, ...] = (), **env: str) -> tuple[int, str]:
    """`python launch.py *args` in a fresh process with the user's environment (less `unset`, plus `env`)."""
    environment = {key: value for key, value in os.environ.items() if key not in unset}
    environment.update(RT_LAB_OUTPUT_DIR=str(cwd / "outputs"), **env)
    done = subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def no_job_started(sweep: Path) -> bool:
    return not any(path.name.isdigit() for path in sweep.glob("*"))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_paper_preset_without_its_judge_key_says_so_in_the_dry_run(tmp_path):
    sweep = tmp_path / "sweep"
    code, out = launched(["-m", "sweeps=a_rt_vs_it", "hydra.launcher.dry_run=true", f"hydra.sweep.dir={sweep}"],
                         tmp_path, unset=("OPENAI_API_KEY",))
    assert code != 0
    assert "24 jobs, 0 done, 24 to run (dry run: nothing launched)" in out  # the plan is shown first
    assert "preflight: 1 problem(s) the sweep would meet before its end; nothing was launched" in out
    assert ("the comparison at the sweep's end: judge.api_key_env='OPENAI_API_KEY': the environment variable "
            "OPENAI_API_KEY is not set; export OPENAI_API_KEY=<key>") in out
    assert no_job_started(sweep)


def test_the_judge_server_is_asked_once_and_a_refused_key_is_named(tmp_path, canned_judge):
    sweep = tmp_path / "sweep"
    args = ["-m", "model=tiny", "method=rt,it", "trainer.seed=1,2", *judge_overrides(canned_judge),
            "hydra.launcher.dry_run=true", f"hydra.sweep.dir={sweep}"]
    code, out = launched(args, tmp_path)
    assert code == 0, out[-3000:]
    assert "preflight: references: 2 job(s) paired (method=it)" in out
    assert "preflight: judge (OpenAIJudgeConfig) for the comparison at the sweep's end" in out
    assert canned_judge.probes == 1 and canned_judge.requests == 0  # one cheap request for 4 jobs; nothing judged

    code, out = launched(args, tmp_path, **{KEY_ENV: "sk-wrong"})
    assert code != 0
    assert f"judge.base_url='{canned_judge.url}': the server refuses the key (HTTP 401)" in out
    assert "sk-wrong" not in out and SECRET not in out


def test_an_unreachable_judge_server_stops_the_launch_unless_told_not_to_reach_it(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    sweep = tmp_path / "sweep"
    url = f"http://127.0.0.1:{closed_port()}/v1"
    args = ["-m", "model=tiny", "method=rt,it", "judge=openai", f"judge.base_url={url}", f"judge.api_key_env={KEY_ENV}",
            f"hydra.sweep.dir={sweep}", "hydra.launcher.dry_run=true"]
    code, out = launched(args, tmp_path)
    assert code != 0
    assert f"judge.base_url='{url}': no answer from {url}" in out
    assert "hydra.launcher.reach_servers=false" in out  # the way out, for a launch node without network

    code, out = launched([*args, "hydra.launcher.reach_servers=false"], tmp_path)
    assert code == 0, out[-3000:]
    assert "for the comparison at the sweep's end, server not contacted" in out


def test_a_judge_a_job_uses_while_it_runs_is_checked_per_job(tmp_path):
    """dataset/refine=openai rewrites the training responses at the job's start, with its own key."""
    sweep = tmp_path / "sweep"
    code, out = launched(["-m", "model=tiny", "method=rt,it", "dataset/refine=openai", "hydra.launcher.dry_run=true",
                          f"hydra.sweep.dir={sweep}"], tmp_path, unset=("RT_LAB_REFINE_KEY",))
    assert code != 0
    assert ("job #0 (model=tiny method=rt dataset/refine=openai) and 1 more (job #1 (model=tiny method=it "
            "dataset/refine=openai)): dataset.refine.backend.api_key_env='RT_LAB_REFINE_KEY'") in out
    assert no_job_started(sweep)


def test_a_single_run_without_its_judge_key_stops_before_training(tmp_path):
    code, out = launched(["model=tiny", "logger=csv", "dataset/refine=openai"], tmp_path, unset=("RT_LAB_REFINE_KEY",))
    assert code != 0
    assert "dataset.refine.backend.api_key_env='RT_LAB_REFINE_KEY': the environment variable" in out
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert not (run_dir / "checkpoints").exists() and "Traceback" not in out


@pytest.fixture
def reference_sweep(tmp_path, compose) -> Path:
    """A finished IT run (seed 1) in another sweep, as Hydra and rt_lab leave it."""
    root = tmp_path / "reference"
    write_run(root, 0, compose, ["model=tiny", "method=it", "trainer.seed=1"], outputs_for("a", "b", "c"))
    return root


def test_every_job_finds_its_reference_in_the_reference_sweep_or_the_launch_stops(tmp_path, reference_sweep):
    sweep = tmp_path / "sweep"
    args = ["-m", "model=tiny", "method=rt", "trainer.seed=1,2", f"compare.reference.sweep={reference_sweep}",
            "hydra.launcher.dry_run=true", f"hydra.sweep.dir={sweep}"]
    code, out = launched(args, tmp_path)
    assert code != 0
    assert (f"job #1 (model=tiny method=rt trainer.seed=2 compare.reference.sweep={reference_sweep}): its reference "
            "(method=it, model=tiny, dataset=sample, trainer.seed=2, prompts=sample, generation.max_new_tokens=") in out
    assert f"is not among the runs or jobs of this sweep or {reference_sweep}; add it to the sweep" in out
    assert "job #0 (" not in out.split("preflight:")[-1]  # seed 1's reference is there
    assert no_job_started(sweep)

    # the reference sweep plans seed 2's IT run (launched, not started yet): it will be there
    (reference_sweep / "jobs.json").write_text(json.dumps({"0": ["model=tiny", "method=it", "trainer.seed=1"],
                                                           "1": ["model=tiny", "method=it", "trainer.seed=2"]}))
    code, out = launched(args, tmp_path)
    assert code == 0, out[-3000:]
    assert "preflight: references: 2 job(s) paired (method=it)" in out


def test_two_qualifying_references_are_found_at_launch(tmp_path, reference_sweep):
    code, out = launched(["-m", "model=tiny", "method=rt,it", f"compare.reference.sweep={reference_sweep}",
                          "hydra.launcher.dry_run=true", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert code != 0
    assert "job #0 (" in out and "2 runs will qualify as its reference (tiny-it-sample-seed1, " \
        "tiny-it-sample-seed1@reference/0)" in out
    assert "or set compare.reference.multiple=all" in out


def test_a_job_without_a_reference_and_no_reference_sweep_is_a_note(tmp_path):
    code, out = launched(["-m", "model=tiny", "method=rt", "hydra.launcher.dry_run=true",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert code == 0, out[-3000:]
    assert "note: job #0 (model=tiny method=rt): its reference (method=it, model=tiny" in out
    assert "the comparison will skip it" in out


def test_an_output_dir_that_cannot_be_written_stops_the_launch(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, out = launched(["-m", "model=tiny", "method=rt,it", "hydra.launcher.dry_run=true",
                          f"paths.output_dir={blocker}/outputs"], tmp_path)
    assert code != 0
    assert f"hydra.sweep.dir={blocker}/outputs/multiruns/" in out and "cannot write there (NotADirectoryError" in out
    assert "Traceback" not in out

    sweep = tmp_path / "sweep"
    code, out = launched(["-m", "model=tiny", "method=rt,it", "hydra.launcher.dry_run=true", f"hydra.sweep.dir={sweep}",
                          f"paths.cache_dir={blocker}/cache"], tmp_path)
    assert code != 0
    assert f"paths.cache_dir={blocker}/cache: cannot write there (NotADirectoryError" in out
    assert no_job_started(sweep)


def test_the_comparison_checks_its_judge_again_before_judging(tmp_path, compose, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    sweep = tmp_path / "sweep"
    write_run(sweep, 0, compose, ["model=tiny", "method=rt"], outputs_for("x", "y", "z"))
    write_run(sweep, 1, compose, ["model=tiny", "method=it"], outputs_for("a", "b", "c"))
    url = f"http://127.0.0.1:{closed_port()}/v1"
    done = subprocess.run([sys.executable, "-m", "rt_lab.compare", str(sweep), "judge=openai", f"judge.base_url={url}",
                           f"judge.api_key_env={KEY_ENV}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert f"the comparison cannot judge: judge.base_url='{url}': no answer from {url}" in out
    assert f"once fixed, `python -m rt_lab.compare {sweep}` compares them" in out
    assert not (sweep / "comparison" / "judgments.jsonl").exists()
