"""What several test files share that is not a fixture: where the repository and the shared data are, the small
overrides that make a launched run take seconds, running `launch.py` (or any `python` command) to the end, and
writing a job dir of a sweep as Hydra and rt_lab leave it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import pytest
from omegaconf import OmegaConf

from rt_lab.layout import RunDir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RT_LAB_SHARED_DATA", REPO.parent / "shared" / "data"))

needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no shared data at {SHARED_DATA}")

# A launched run (train, generate, judge) of the tiny model in seconds.
FAST = ["model=tiny", "data.batch_size=4", "data.micro_batch_size=2", "data.max_length=128",
        "dataset.limit=8", "generation.max_new_tokens=8", "prompts.limit=3"]
# An in-process training run of the tiny model: a checkpoint every step, so resuming can be tested at any step.
TINY = ["model=tiny", "logger=none", "dataset.limit=16", "data.batch_size=4", "data.micro_batch_size=2",
        "data.max_length=128", "trainer.checkpoint_every_n_steps=1", "+trainer.lightning.enable_progress_bar=false"]


def run_python(args: Sequence[str], cwd: Path, timeout: float = 600, offline: bool = True,
               env: dict[str, str] | None = None) -> str:
    """`python *args` in `cwd` to the end, offline (HF_HUB_OFFLINE) unless told otherwise, with run outputs under
    cwd/outputs and the variables `env` added; its stdout. A non-zero exit fails the test with the end of both
    streams."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    environment.update(RT_LAB_OUTPUT_DIR=str(cwd / "outputs"), **(env or {}),
                       **({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"} if offline else {}))
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    return result.stdout


def launch(args: Sequence[str], cwd: Path, timeout: float = 600, offline: bool = True,
           env: dict[str, str] | None = None) -> str:
    """`python launch.py *args`, as `run_python` runs it."""
    return run_python([str(REPO / "launch.py"), *args], cwd, timeout, offline, env)


def write_run(root: Path, number: int, compose: Callable, overrides: list[str], outputs: list[dict] | None,
              done: bool = True) -> Path:
    """A job dir as Hydra and rt_lab leave it: the saved config and overrides, outputs, the completion marker."""
    job = RunDir(root / str(number))
    cfg = compose(overrides)
    job.hydra_config.parent.mkdir(parents=True)
    OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), job.hydra_config)
    OmegaConf.save(OmegaConf.create(overrides), job.hydra_overrides)
    if outputs is not None:
        job.outputs.write_text(json.dumps(outputs))
    if done:
        job.done_marker.touch()
    return job.path


def outputs_for(*answers: str) -> list[dict]:
    return [{"instruction": f"question {i}", "output": answer} for i, answer in enumerate(answers)]


def keep_report(name: str, text: str) -> None:
    """Print a test's report (seen with -s) and, with RT_LAB_TEST_REPORTS=DIR, keep it as DIR/NAME (.ci/run prints
    them)."""
    print(text)
    if os.environ.get("RT_LAB_TEST_REPORTS"):
        reports = Path(os.environ["RT_LAB_TEST_REPORTS"])
        reports.mkdir(parents=True, exist_ok=True)
        (reports / name).write_text(text + "\n")
