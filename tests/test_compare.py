"""The sweep comparison (rt_lab.compare): pairing runs with references, the seed aggregate, and a real tiny-model
multirun that ends with the table, the plot and W&B runs, judged by a canned judge on a loopback HTTP server
(a paid API's model cannot run here)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO
from judge_server import KEY_ENV, SECRET, CannedJudgeServer, shown_outputs
from rt_lab.compare import aggregate, find_runs, missing_jobs, pair_runs

FAST = ["model=tiny", "trainer.batch_size=4", "trainer.micro_batch_size=2", "data.max_length=128",
        "dataset.limit=8", "generation.max_new_tokens=12", "prompts.limit=4"]


class LengthJudgeServer(CannedJudgeServer):
    """A canned judge that prefers the longer response (P = 0.7); equal lengths: 0.5."""

    def top_logprobs(self, prompt: str) -> list[tuple[str, float]]:
        first, second = shown_outputs(prompt)
        p_second = 0.5 if len(first) == len(second) else 0.7 if len(second) > len(first) else 0.3
        return [("M", p_second), ("m", 1 - p_second)]


@pytest.fixture
def length_judge():
    server = LengthJudgeServer()
    try:
        yield server
    finally:
        server.close()


def judge_overrides(server: CannedJudgeServer) -> list[str]:
    return ["judge=openai", f"judge.base_url={server.url}", "judge.model=canned-judge",
            f"judge.api_key_env={KEY_ENV}", "judge.backoff_s=0.01"]


def launch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline",
               RT_LAB_OUTPUT_DIR=str(cwd / "outputs"), **{KEY_ENV: SECRET})
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    return result


def test_sweep_ends_with_table_plot_and_wandb_runs_then_resumes_without_calls_canned_judge(tmp_path, length_judge):
    sweep = tmp_path / "sweep"
    result = launch([str(REPO / "launch.py"), "-m", "method=rt,it,base", "dataset=sample", "logger=wandb",
                     f"hydra.sweep.dir={sweep}", *FAST, *judge_overrides(length_judge)], tmp_path)
    out = sweep / "comparison"
    # the printed table: rt and base against it, one seed each
    assert "| tiny | rt | sample |" in result.stdout and "| tiny | base | sample |" in result.stdout
    with (out / "summary.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"rt", "base"} and {row["reference"] for row in rows.values()} == {"tiny-it-sample-seed1"}
    for method, row in rows.items():
        assert int(row["n_total"]) == 4 and int(row["n_unparsable"]) == 0
        # the canned judge prefers the longer answer: recompute the win rate from the outputs themselves
        run_dir = sweep / {"rt": "0", "base": "2"}[method]
        outputs = json.loads((run_dir / "model_outputs.json").read_text())
        reference = {r["instruction"]: r["output"] for r in json.loads((sweep / "1" / "model_outputs.json").read_text())}
        expected = [1.5 if o["output"] == reference[o["instruction"]] else
                    1.5 if len(o["output"]) == len(reference[o["instruction"]]) else
                    1.7 if len(o["output"]) > len(reference[o["instruction"]]) else 1.3 for o in outputs]
        assert float(row["win_rate"]) == pytest.approx((sum(expected) / 4 - 1) * 100)
        detail = json.loads((run_dir / "comparison" / "vs_tiny-it-sample-seed1.json").read_text())
        assert [r["preference"] for r in detail["rows"]] == pytest.approx(expected)
    png = (out / "win_rates.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert (out / "summary.md").read_text().count("| tiny |") == 2
    # W&B: each compared job's own run (same id as its training run) and a summary run for the sweep
    for job in ("0", "2"):
        run_id = (sweep / job / "wandb_run_id").read_text()
        assert len(list((sweep / job / "wandb").glob(f"offline-run-*-{run_id}"))) == 2
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1

    # the standalone command on the finished sweep asks the judge nothing new and writes the same numbers
    calls = length_judge.requests
    before = (out / "summary.csv").read_text()
    again = launch(["-m", "rt_lab.compare", str(sweep), "logger=none"], tmp_path)
    assert length_judge.requests == calls
    assert (out / "summary.csv").read_text() == before and "| tiny | rt | sample |" in again.stdout


def write_run(root: Path, number: int, compose, overrides: list[str], outputs: list[dict] | None,
              done: bool = True) -> Path:
    """A job dir as Hydra and rt_lab leave it: the saved config and overrides, outputs, the completion marker."""
    job = root / str(number)
    cfg = compose(overrides)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), job / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    if outputs is not None:
        (job / "model_outputs.json").write_text(json.dumps(outputs))
    if done:
        (job / "run.done").touch()
    return job


def outputs_for(*answers: str) -> list[dict]:
    return [{"instruction": f"question {i}", "output": answer} for i, answer in enumerate(answers)]


def test_pairing_by_selector_names_missing_and_unfinished_references(tmp_path, compose):
    root = tmp_path / "sweep"
    write_run(root, 0, compose, ["method=rt", "trainer.seed=1"], outputs_for("a", "b"))
    write_run(root, 1, compose, ["method=it", "trainer.seed=1"], outputs_for("c", "d"))
    write_run(root, 2, compose, ["method=rt", "trainer.seed=2"], outputs_for("a", "b"))
    write_run(root, 3, compose, ["method=it", "trainer.seed=2"], None, done=False)
    write_run(root, 4, compose, ["method=base", "trainer.seed=3"], outputs_for("e", "f"))
    (root / "jobs.json").write_text(json.dumps({str(n): [f"job{n}"] for n in range(6)}))
    cfg = compose([])
    runs = find_runs(root)
    pairs, unpaired = pair_runs(runs, cfg.compare)
    assert [(run.dir.name, reference.run.dir.name) for run, reference in pairs] == [("0", "1")]
    assert any("seed2" in line and "is unfinished" in line for line in unpaired)
    assert any("seed3" in line and "is not in the sweep" in line for line in unpaired)
    assert missing_jobs(root, runs) == ["#3 unfinished: job3", "#5 not started: job5"]

    # a nested selector: the reference is the seed-1 rt run for every run of the same dataset
    cfg.compare.reference.select = {"method": "rt", "trainer": {"seed": 1}}
    cfg.compare.reference.match = ["dataset"]
    pairs, _ = pair_runs(runs, cfg.compare)
    assert sorted((run.dir.name, reference.run.dir.name) for run, reference in pairs) == \
        [("1", "0"), ("2", "0"), ("4", "0")]


def test_two_qualifying_references_are_an_error(tmp_path, compose):
    root = tmp_path / "sweep"
    write_run(root, 0, compose, ["method=rt"], outputs_for("a"))
    write_run(root, 1, compose, ["method=it", "trainer.lightning.max_epochs=1"], outputs_for("b"))
    write_run(root, 2, compose, ["method=it", "trainer.lightning.max_epochs=2"], outputs_for("c"))
    with pytest.raises(ValueError, match="2 runs qualify as its reference"):
        pair_runs(find_runs(root), compose([]).compare)


def test_reference_file_missing_an_instruction_names_the_item(tmp_path, compose, length_judge, monkeypatch):
    from rt_lab.compare import compare

    monkeypatch.setenv(KEY_ENV, SECRET)
    root = tmp_path / "sweep"
    write_run(root, 0, compose, ["method=rt"], outputs_for("a", "b"))
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps([{"instruction": "question 0", "output": "x", "generator": "gpt"}]))
    cfg = compose([*judge_overrides(length_judge), f"compare.reference.file={reference}", "logger=none"])
    with pytest.raises(ValueError, match=r"model_outputs.json item 1: instruction 'question 1' has no output"):
        compare(root, cfg)


def test_aggregate_mean_and_sample_std_over_seeds():
    def row(method: str, seed: int, win_rate: float) -> dict:
        return {"model": "m", "method": method, "dataset": "d", "setting": "", "reference_kind": "method=it",
                "seed": seed, "win_rate": win_rate, "standard_error": 4.0, "n_unparsable": 1}

    table = aggregate([row("rt", 1, 40.0), row("rt", 2, 44.0), row("rt", 3, 48.0), row("base", 1, 10.0)])
    by_method = {r["method"]: r for r in table}
    assert by_method["rt"]["seeds"] == 3 and by_method["rt"]["win_rate"] == pytest.approx(44.0)
    assert by_method["rt"]["win_rate_std"] == pytest.approx(4.0)  # sample std (ddof 1) of 40, 44, 48
    assert by_method["rt"]["n_unparsable"] == 3
    assert math.isnan(by_method["base"]["win_rate_std"]) and by_method["base"]["standard_error"] == 4.0


def test_setting_column_shows_only_overrides_that_vary(tmp_path, compose):
    from rt_lab.compare import describe, varying_overrides

    root = tmp_path / "sweep"
    common = ["model=tiny", "trainer.batch_size=4"]
    for number, extra in enumerate((["dataset.refusal_mix=0"], ["dataset.refusal_mix=100"], [])):
        write_run(root, number, compose, [*common, "method=rt", f"trainer.seed={number}", *extra], outputs_for("a"))
    runs = find_runs(root)
    varying = varying_overrides(runs)
    assert varying == {"dataset.refusal_mix"}
    assert [describe(run, varying)["setting"] for run in runs] == \
        ["dataset.refusal_mix=0", "dataset.refusal_mix=100", ""]
