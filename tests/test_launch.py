"""The entry point end to end: `python launch.py` as a user types it, with the tiny model, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import FAST, REPO, SHARED_DATA, launch, needs_shared_data


def test_multirun_rt_and_it_end_to_end(tmp_path):
    result = launch(["-m", "method=rt,it", "dataset=sample", "logger=wandb", *FAST], tmp_path)
    sweeps = list((tmp_path / "outputs" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    generators = []
    for job in jobs:
        outputs = json.loads((job / "model_outputs.json").read_text())
        assert len(outputs) == 3
        assert {"instruction", "output", "generator", "dataset"} <= set(outputs[0])
        generators.append(outputs[0]["generator"])
        assert (job / "trained.done").is_file() and (job / "model" / "model.safetensors").is_file()
        assert (job / "checkpoints" / "last.ckpt").is_file()
        # one W&B run per job (the comparison at the end continues rt's run, not a new one)
        run_id = (job / "wandb_run_id").read_text()
        assert {path.name.rsplit("-", 1)[1] for path in (job / "wandb").glob("offline-run-*")} == {run_id}
    assert generators == ["tiny-rt-sample-seed1", "tiny-it-sample-seed1"]
    assert result.count("outputs written to") == 2
    # the sweep ends with the comparison (the default judge: SmolLM2 in this process)
    assert "| tiny | rt | sample | - | method=it | 1 |" in result
    assert (sweeps[0] / "comparison" / "win_rates.png").is_file()


def test_base_method_trains_nothing(tmp_path):
    launch(["method=base", "logger=csv", *FAST], tmp_path)
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert (run_dir / "model_outputs.json").is_file()
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "trained.done").exists()


def test_two_launches_in_the_same_second_never_share_a_dir(tmp_path):
    env = dict(os.environ, RT_LAB_OUTPUT_DIR=str(tmp_path / "outputs"))
    command = [sys.executable, str(REPO / "launch.py"), "--cfg", "job", "--resolve"]
    procs = [subprocess.Popen(command + ["hydra.run.dir=${paths.output_dir}/runs/${now:%Y-%m-%d_%H-%M-%S}_${rt_lab.uid:}",
                                         "run.name=PROBE${hydra:run.dir}"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    dirs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        dirs.append(next(line for line in out.splitlines() if "PROBE" in line))
    assert dirs[0] != dirs[1]


@needs_shared_data
def test_it_on_real_lima_rows_offline(tmp_path):
    launch(["method=it", "dataset=lima", f"paths.data_dir={SHARED_DATA}", "logger=csv", *FAST], tmp_path)
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    log = (run_dir / "launch.log").read_text()
    assert "dataset lima from" in log and "lima_data.jsonl: kept 8 rows" in log
    assert len(json.loads((run_dir / "model_outputs.json").read_text())) == 3


def test_rules_method_and_an_ablation(tmp_path):
    launch(["-m", "method=rules", "rules.enabled=[eos_ramp,uniform,diversity],[eos_ramp,uniform]", "logger=csv",
            *FAST], tmp_path)
    (sweep,) = (tmp_path / "outputs" / "multiruns").iterdir()
    generators = [json.loads((sweep / job / "model_outputs.json").read_text())[0]["generator"] for job in "01"]
    assert generators == ["tiny-rules[eos_ramp,uniform,diversity]-sample-seed1", "tiny-rules[eos_ramp,uniform]-sample-seed1"]
    assert not (sweep / "0" / "checkpoints").exists()
