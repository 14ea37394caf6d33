"""Sweeps: every preset in sweeps/ expands to the job count its header declares, and re-launching a sweep in
the same dir runs only the jobs that have not finished."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import helpers
from helpers import REPO, launch

PRESETS = sorted((REPO / "sweeps").glob("*.yaml"))
FAST = [*helpers.FAST, "logger=csv"]


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_dry_run_lists_the_declared_jobs(preset, tmp_path):
    declared = re.search(r"^# jobs: (\d+)$", preset.read_text(), re.MULTILINE)
    assert declared, f"{preset.name}: header needs a '# jobs: N' line"
    header = preset.read_text().split("\n# jobs:")[0]
    assert "GPU-hours" in header or "CPU-minutes" in header, f"{preset.name}: header needs a cost estimate"
    # as the header's command runs it on a cluster: the Hub reachable, the data-dir mirror where it says so (every
    # job is validated, its files included, before the dry run lists it; the dry run itself reads no dataset)
    data = [f"paths.data_dir={helpers.SHARED_DATA}"] if "paths.data_dir=" in header else []
    if "dataset.refusals.file=DATA/" in header:
        relative = header.split("dataset.refusals.file=DATA/")[1].split()[0]
        data.append(f"dataset.refusals.file={helpers.SHARED_DATA / relative}")
    # with the variables the command sets and a judge key (a made-up one: the judge's server is not reached from
    # here, hence reach_servers=false)
    prefixes = re.findall(r"((?:\b[A-Z][A-Z0-9_]*=\S+ )+)python launch\.py", header)
    variables = dict(item.split("=", 1) for prefix in prefixes for item in prefix.split())
    variables.setdefault("OPENAI_API_KEY", "sk-made-up")
    out = launch(["-m", f"sweeps={preset.stem}", "hydra.launcher.dry_run=true", "hydra.launcher.reach_servers=false",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}", *data], tmp_path, offline=False, env=variables)
    jobs = int(declared.group(1))
    assert f": {jobs} jobs, 0 done, {jobs} to run (dry run: nothing launched)" in out
    assert len(re.findall(r"^  #\d+ \[todo\]", out, re.MULTILINE)) == jobs
    assert not [p for p in (tmp_path / "sweep").iterdir() if p.is_dir()]  # no job ran


def test_relaunching_a_sweep_runs_only_unfinished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    command = ["-m", "method=rt,it", f"hydra.sweep.dir={sweep}", *FAST]
    first = launch(command, tmp_path)
    assert "2 jobs, 0 done, 2 to run" in first
    stamps = {job: (sweep / job / "model_outputs.json").stat().st_mtime_ns for job in "01"}
    assert "2 jobs, 2 done, 0 to run" in launch(command, tmp_path)
    (sweep / "1" / "run.done").unlink()
    (sweep / "1" / "model_outputs.json").unlink()
    third = launch(command, tmp_path)
    assert "2 jobs, 1 done, 1 to run" in third and "#1 [todo]" in third
    assert (sweep / "0" / "model_outputs.json").stat().st_mtime_ns == stamps["0"]
    assert (sweep / "1" / "model_outputs.json").is_file()


def test_paired_values_are_zipped_not_crossed(tmp_path):
    out = launch(["-m", "model=tiny", "trainer.seed=1,2",
                  'hydra.sweeper.paired=[["method=rt","trainer.lightning.max_epochs=5"],'
                  '["method=it","trainer.lightning.max_epochs=15"]]',
                  "hydra.launcher.dry_run=true", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    jobs = re.findall(r"\[todo\] (.*)$", out, re.MULTILINE)
    assert jobs == [
        "model=tiny trainer.seed=1 method=rt trainer.lightning.max_epochs=5",
        "model=tiny trainer.seed=1 method=it trainer.lightning.max_epochs=15",
        "model=tiny trainer.seed=2 method=rt trainer.lightning.max_epochs=5",
        "model=tiny trainer.seed=2 method=it trainer.lightning.max_epochs=15",
    ]


def test_a_paired_arm_may_not_repeat_a_swept_key(tmp_path):
    env = dict(os.environ, RT_LAB_OUTPUT_DIR=str(tmp_path / "outputs"))
    result = subprocess.run([sys.executable, str(REPO / "launch.py"), "-m", "method=rt,it",
                             'hydra.sweeper.paired=[["method=full"]]', "hydra.launcher.dry_run=true"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "sets ['method']" in result.stderr
