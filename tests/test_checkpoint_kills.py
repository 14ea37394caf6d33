"""Checkpoint saves killed for real (rt_lab/train/preemption.py, rt_lab/train/fsdp.py): a training process of the
tiny model, saving `last.ckpt` every step, is SIGKILLed at every file-system step of a save and its swap (and at
seeded random instants shortly after one), for both formats: one file (one device) and a folder of shards (FSDP
over gloo, state_dict_type=sharded). After each kill:
- what the next start finds, once `recover` has run, is only the newest complete checkpoint: the one of the last
  finished swap, or of the save in flight when its staged copy was complete and the old one already moved aside;
  its weights are exactly the uninterrupted run's at its step;
- the next start (a real process, which runs `recover` itself) resumes from it and ends with the uninterrupted
  run's weights at every step it takes."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from helpers import REPO, TINY, keep_report, run_python
from rt_lab.train.preemption import recover

TRAIN = TINY + ["adapter=full", "trainer.lightning.max_epochs=1", "trainer.lightning.precision=32-true"]
FORMATS = {
    "file": TRAIN + ["trainer=cpu"],
    "sharded": TRAIN + ["trainer=fsdp", "trainer.lightning.accelerator=cpu", "trainer.lightning.devices=1",
                        "trainer.lightning.strategy.state_dict_type=sharded"],
}
STEPS = 4  # 16 rows, batches of 4, one epoch
DELAYED_KILLS = 3  # per format, at random instants after random steps of the run's saves
SEED = 24


def work(runs: list[dict], folder: Path) -> None:
    """The worker (tests/checkpoint_kill_worker.py) through `runs`, one child process each."""
    plan = folder / f"plan-{len(list(folder.glob('plan-*.json')))}.json"
    plan.write_text(json.dumps({"runs": runs}))
    run_python([str(REPO / "tests" / "checkpoint_kill_worker.py"), str(plan)], folder, timeout=1200)


def events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def swapped_in(event: dict) -> bool:
    """The rename that puts a finished save in place as `last.ckpt`."""
    return event["event"] == "os.rename" and event["path"].endswith(" -> last.ckpt")


def kill_points(reference: list[dict], rng: random.Random) -> list[tuple[int, float]]:
    """(event number, delay): every step from just after the first swap to just before the third (a whole save,
    its swap over a complete checkpoint, its cleanup, the next save's writes), then random instants."""
    swaps = [event["n"] for event in reference if swapped_in(event)]
    assert len(swaps) == STEPS, swaps
    points = [(n, 0.0) for n in range(swaps[0] + 1, swaps[2])]
    points += [(rng.randint(2, len(reference)), rng.uniform(0.001, 0.05)) for _ in range(DELAYED_KILLS)]
    return points


def expected_step(reference: list[dict], kill_at: int) -> int:
    """The step of the checkpoint a kill just before event `kill_at` leaves: the last swapped-in one, or the save
    in flight when the kill fell between moving the old checkpoint aside and moving the new one in."""
    before = [event for event in reference if event["n"] < kill_at]
    completed = sum(swapped_in(event) for event in before)
    killed = reference[kill_at - 1]
    in_between = swapped_in(killed) and before[-1]["path"] == "last.ckpt -> .last.ckpt.old"
    return completed + in_between


def checkpoint_state(checkpoint: Path, work_dir: Path) -> tuple[int, dict[str, torch.Tensor]]:
    """(global step, module weights) of a `last.ckpt` file or folder of shards."""
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        return saved["global_step"], saved["state_dict"]
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    whole = work_dir / f"{checkpoint.parent.parent.name}.pt"
    dcp_to_torch_save(checkpoint, whole)
    return torch.load(checkpoint / "meta.pt", weights_only=False)["global_step"], torch.load(whole)["model"]


def assert_equal_states(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], where: str) -> None:
    assert set(state) == set(reference), where
    for name, value in reference.items():
        assert torch.equal(state[name], value), f"{where}: {name}"


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> tuple[Path, dict[str, list[dict]], list[dict]]:
    """The uninterrupted runs, then one run per kill point, then each killed run's next start. Returns the root,
    each format's reference events, and the kills ({format, dir, kill_at, delay_s})."""
    root = tmp_path_factory.mktemp("kills")
    work([{"dir": str(root / "reference" / name), "overrides": overrides, "states": True}
          for name, overrides in FORMATS.items()], root)
    reference = {name: events(root / "reference" / name) for name in FORMATS}
    rng = random.Random(SEED)
    kills = [{"format": name, "dir": str(root / name / f"{n}-{delay:.3f}"), "kill_at": n, "delay_s": delay}
             for name in FORMATS for n, delay in kill_points(reference[name], rng)]
    work([{"dir": kill["dir"], "overrides": FORMATS[kill["format"]], "kill_at": kill["kill_at"],
           "delay_s": kill["delay_s"]} for kill in kills], root)
    for kill in kills:  # what the kill left, kept for the checks below
        shutil.copytree(Path(kill["dir"]) / "checkpoints", Path(kill["dir"]) / "left")
    work([{"dir": kill["dir"], "overrides": FORMATS[kill["format"]], "states": True} for kill in kills], root)
    lines = [f"{len(kills)} kills of a training process saving last.ckpt every step ({STEPS} steps)"]
    for kill in kills:
        event = reference[kill["format"]][kill["kill_at"] - 1]
        exits = json.loads((Path(kill["dir"]) / "exit.json").read_text())
        outcome = ", then ".join("SIGKILL" if "signal" in status else f"exit {status['code']}" for status in exits)
        lines.append(f"{kill['format']:<7} before {event['event']} {event['path']}"
                     + (f" + {kill['delay_s'] * 1000:.0f} ms" if kill["delay_s"] else "") + f": {outcome}")
    keep_report("checkpoint_kills.log", "\n".join(lines))
    return root, reference, kills


def test_at_least_twenty_points_of_saves_are_killed_in_both_formats_together(killed):
    _, reference, kills = killed
    died = [kill for kill in kills if json.loads((Path(kill["dir"]) / "exit.json").read_text())[0] == {"signal": 9}]
    assert len(died) >= 20
    for name in reference:
        kinds = {reference[name][kill["kill_at"] - 1]["event"] for kill in kills if kill["format"] == name}
        assert {"open", "os.rename", "os.remove", "os.mkdir"} <= kinds, (name, kinds)
    assert "shutil.rmtree" in {reference["sharded"][kill["kill_at"] - 1]["event"] for kill in kills}
    for kill in kills:
        first = json.loads((Path(kill["dir"]) / "exit.json").read_text())[0]
        if not kill["delay_s"]:
            assert first == {"signal": 9}, kill  # died at the point, not before, not after


def test_recovery_finds_the_newest_complete_checkpoint_and_clears_the_rest(killed, tmp_path):
    root, reference, kills = killed
    for kill in kills:
        name, left = kill["format"], Path(kill["dir"]) / "left"
        recover(left / "last.ckpt")
        assert {p.name for p in left.iterdir()} <= {"last.ckpt", ".last.ckpt.lock"}, kill
        step = expected_step(reference[name], kill["kill_at"])
        if not (left / "last.ckpt").exists():
            assert step == 0 or kill["delay_s"], kill  # killed before the first swap
            continue
        saved_step, weights = checkpoint_state(left / "last.ckpt", tmp_path)
        assert saved_step == step if not kill["delay_s"] else saved_step >= step, (kill, saved_step)
        assert_equal_states(weights, torch.load(root / "reference" / name / "states" / f"{saved_step}.pt"),
                            f"{kill} at step {saved_step}")


def test_the_next_start_resumes_from_it_to_the_uninterrupted_weights(killed, tmp_path):
    root, reference, kills = killed
    for kill in kills:
        name, run = kill["format"], Path(kill["dir"])
        assert json.loads((run / "exit.json").read_text())[-1] == {"code": 0}, kill
        states = root / "reference" / name / "states"
        resumed = sorted(int(p.stem) for p in (run / "states").glob("*.pt")) if (run / "states").is_dir() else []
        from_step = resumed[0] - 1 if resumed else STEPS
        assert from_step >= expected_step(reference[name], kill["kill_at"]), (kill, from_step)
        assert resumed == list(range(from_step + 1, STEPS + 1)), kill
        for step in resumed:
            assert_equal_states(torch.load(run / "states" / f"{step}.pt"), torch.load(states / f"{step}.pt"),
                                f"{kill} resumed, step {step}")
        final_step, weights = checkpoint_state(run / "checkpoints" / "last.ckpt", tmp_path)
        assert final_step == STEPS
        assert_equal_states(weights, torch.load(states / f"{STEPS}.pt"), f"{kill} resumed, last.ckpt")
