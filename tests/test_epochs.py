"""Epoch selection in one run (rt_lab/generate/epochs.py): real Lightning training of the tiny model that generates at
listed epochs. Under a constant learning rate, epochs 1 and 2 of one run answer exactly as separate runs of 1
and 2 epochs; a requeued run keeps finished epochs; bad `generation.at_epochs` fail before training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate
from omegaconf import open_dict

import helpers
from helpers import REPO, launch, run_python
from judge_server import judge_overrides
from rt_lab.config.validate import ConfigError, validate
from rt_lab.generate.epochs import EpochSelection
from rt_lab.layout import RunDir
from rt_lab.train.export import exporter
from rt_lab.models import load_tokenizer
from rt_lab.data.prompts import load_prompts
from rt_lab.run import run, run_base
from rt_lab.train.fit import train

# a constant learning rate: the one schedule under which one run's epoch N is a separate N-epoch run
CONSTANT = ["trainer.schedule.name=constant", "trainer.schedule.warmup_ratio=0"]
TINY = [*helpers.TINY, "dataset.limit=8", "generation.max_new_tokens=8", "prompts.limit=3", "trainer.optimizer.lr=3e-2",
        *CONSTANT]


def job(compose, overrides: list[str], run_dir: Path):
    """The config a launched job receives: Hydra's own node is not part of it."""
    cfg = compose(overrides, run_dir)
    with open_dict(cfg):
        cfg.pop("hydra")
    return cfg


def outputs(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def test_epochs_of_one_run_equal_separate_runs_under_a_constant_schedule(compose, tmp_path):
    """LoRA with dropout: the data order of epoch e is seeded by seed + e, and the model copy exported at
    epoch 1 leaves the RNG streams (dropout masks) as they were."""
    one = run(job(compose, TINY + ["generation.at_epochs=[1,2]", "trainer.lightning.max_epochs=2"], tmp_path / "one"))
    separate = {epochs: run(job(compose, TINY + [f"trainer.lightning.max_epochs={epochs}"], tmp_path / f"sep{epochs}"))
                for epochs in (1, 2)}
    for epochs in (1, 2):
        assert outputs(RunDir(tmp_path / "one").epoch(epochs).outputs) == outputs(separate[epochs])
    assert outputs(one) == outputs(separate[2])
    # the test means something only when training moved the answers between the epochs
    assert outputs(separate[1]) != outputs(separate[2])
    assert not RunDir(tmp_path / "one").epoch(1).model.exists()  # the epoch's export is gone
    summary = json.loads(RunDir(tmp_path / "one").epoch_summary.read_text())
    assert summary == [{"epoch": 1, "outputs": True}, {"epoch": 2, "outputs": True}]


@pytest.mark.parametrize("stop_at", [3, 2])
def test_a_requeued_run_keeps_finished_epochs_and_generates_the_rest(compose, tmp_path, stop_at):
    """Stopped at the first step of epoch 2 (as a preempted job), then run again in the same dir: epoch 1 is not
    answered again, epoch 2 and the run's outputs are written. Stopped at epoch 1's last step with its outputs
    lost (the job died while generating): the rerun resumes at that step and answers epoch 1 alike."""
    cfg = job(compose, TINY + ["generation.at_epochs=[1,2]", "trainer.lightning.max_epochs=2"], tmp_path)
    L.seed_everything(cfg.trainer.seed, workers=True)
    base = run_base(cfg)
    tokenizer = load_tokenizer(cfg.model, base.path)
    template = instantiate(cfg.template)
    selection = EpochSelection.build(cfg, tokenizer, template, load_prompts(cfg.prompts), base,
                                     exporter(cfg.adapter), tmp_path, [])

    class Preempt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == stop_at:
                trainer.should_stop = True

    train(cfg, base.load(), tokenizer, template, tmp_path, [], [selection.callback(), Preempt()])
    first = RunDir(tmp_path).epoch(1).outputs
    assert first.is_file() and not RunDir(tmp_path).epoch(2).path.exists()
    stamp, answers = first.stat().st_mtime_ns, outputs(first)
    if stop_at == 2:
        shutil.rmtree(RunDir(tmp_path).epoch(1).path)  # its generations.jsonl too: answered anew
    run(cfg)
    assert outputs(first) == answers
    assert (first.stat().st_mtime_ns == stamp) == (stop_at == 3)
    assert outputs(RunDir(tmp_path).epoch(2).outputs) == outputs(RunDir(tmp_path).outputs)


@pytest.mark.parametrize(("value", "message"), [
    ("[0,2]", "[0] outside 1..trainer.lightning.max_epochs=2"),
    ("[1,3]", "[3] outside 1..trainer.lightning.max_epochs=2"),
    ("[2,1]", "must be increasing without duplicates"),
    ("[1,1]", "must be increasing without duplicates"),
])
def test_bad_at_epochs_name_the_key(compose, value, message):
    cfg = compose(TINY + [f"generation.at_epochs={value}", "trainer.lightning.max_epochs=2"])
    with pytest.raises(ConfigError, match="generation.at_epochs") as err:
        validate(cfg, files=False)
    assert message in str(err.value)


@pytest.mark.parametrize("value", ["[1.5]", "2"])
def test_at_epochs_that_are_not_a_list_of_epochs_do_not_compose(compose, value):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="generation.at_epochs"):
        compose(TINY + [f"generation.at_epochs={value}"])


def test_at_epochs_need_training_epochs_and_the_hf_backend(compose):
    with pytest.raises(ConfigError, match="method=base trains nothing"):
        validate(compose(TINY + ["method=base", "generation.at_epochs=[1]"]), files=False)
    with pytest.raises(ConfigError, match="unset trainer.lightning.max_steps"):
        validate(compose(TINY + ["generation.at_epochs=[1]", "trainer.lightning.max_steps=3"]), files=False)
    with pytest.raises(ConfigError, match="generation.backend=hf, not vllm"):
        validate(compose(TINY + ["generation.at_epochs=[1]", "generation.backend=vllm"]), files=False)
    validate(compose(TINY), files=False)


def test_launch_generates_and_judges_each_epoch_then_the_comparison_picks_one(tmp_path, length_judge):
    """`python launch.py ... generation.at_epochs=[1,2]` with a reference file: each epoch is judged in the run
    (canned judge on loopback, preferring the longer answer); `python -m rt_lab.compare --pick-epoch` reuses
    those judgments and names the best epoch."""
    prompts = [json.loads(line)["instruction"] for line in (REPO / "rt_lab" / "sample_data" / "sample_prompts.jsonl")
               .read_text().splitlines()[:3]]
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps([{"instruction": p, "output": "x" * 20, "generator": "ref"} for p in prompts]))
    judge = judge_overrides(length_judge)
    common = [f"compare.reference.file={reference}", *judge]
    sweep = tmp_path / "sweep"
    launch([*TINY, "logger=csv", "trainer.lightning.max_epochs=2",
            "generation.at_epochs=[1,2]", f"hydra.run.dir={sweep}/0", *common], tmp_path)
    run_dir = sweep / "0"
    summary = json.loads(RunDir(run_dir).epoch_summary.read_text())
    assert [row["epoch"] for row in summary] == [1, 2] and all(row["n_total"] == 3 for row in summary)
    for row in summary:  # recomputed from the outputs: the longer answer wins with p = 0.7
        answers = outputs(RunDir(run_dir).epoch(row["epoch"]).outputs)
        expected = [1.7 if len(a["output"]) > 20 else 1.3 if len(a["output"]) < 20 else 1.5 for a in answers]
        assert row["win_rate"] == pytest.approx((sum(expected) / 3 - 1) * 100)
        assert RunDir(run_dir).epoch(row["epoch"]).verdicts("ref").is_file()
    logged = (next(run_dir.rglob("metrics.csv"))).read_text()
    assert "epoch_selection/win_rate" in logged
    asked = length_judge.requests
    result = run_python(["-m", "rt_lab.compare", str(sweep), "--pick-epoch", *common], tmp_path)
    assert length_judge.requests == asked  # every pair was judged in the run already
    best = max(summary, key=lambda row: (row["win_rate"], -row["epoch"]))["epoch"]
    assert f"tiny rt sample: epoch {best} " in result
    assert "| tiny | rt | sample | - | 1 |" in result
    picked = json.loads((sweep / "comparison" / "picked_epochs.json").read_text())
    assert [(p["method"], p["epoch"]) for p in picked] == [("rt", best)]
    assert (sweep / "comparison" / "win_rate_vs_epoch.png").read_bytes()[:4] == b"\x89PNG"
    # the sweep comparison of the run's own outputs (the last epoch's) reuses the run's judgments too
    run_python(["-m", "rt_lab.compare", str(sweep), *common], tmp_path)
    assert length_judge.requests == asked
    assert (sweep / "comparison" / "summary.md").is_file()
