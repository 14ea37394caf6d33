"""The swap of `last.ckpt` (rt_lab/train/preemption.py) and the recovery a rerun does first: whatever a crash left
on disk (the checkpoint a file or a folder of FSDP shards, a stale aside or staged copy a file or a folder), the
next swap succeeds and the rerun resumes from the newest complete checkpoint. The crash states are laid out on
disk directly; a real Trainer's save is cut short by a failing object; the last test resumes a real training run
from a crash state."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from helpers import TINY
from rt_lab.train.fit import build_trainer
from rt_lab.train.preemption import StagedCheckpointIO, aside_of, recover, replace, staging_of
from test_training import fit

KINDS = ["file", "folder"]


def lay(path: Path, kind: str | None, content: str) -> None:
    """A checkpoint as trainer=fsdp's state_dict_type makes it: one file (full) or a folder of shards (sharded)."""
    if kind == "file":
        path.write_text(content)
    elif kind == "folder":
        path.mkdir()
        (path / "shard_0").write_text(content)


def content(path: Path) -> str:
    return (path / "shard_0" if path.is_dir() else path).read_text()


def checkpoint_files(folder: Path) -> list[str]:
    """What is in the checkpoints folder but recover's lock file."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".last.ckpt.lock")


def test_a_folder_checkpoint_replaces_a_file_or_a_folder(tmp_path):
    target = tmp_path / "last.ckpt"
    staging = staging_of(target)
    for make_staging, expect in [(lambda: staging.write_text("file 1"), "file 1"),
                                 (lambda: (staging.mkdir(), (staging / "shard").write_text("folder 1")), "folder 1"),
                                 (lambda: (staging.mkdir(), (staging / "shard").write_text("folder 2")), "folder 2"),
                                 (lambda: staging.write_text("file 2"), "file 2")]:
        make_staging()
        replace(staging, target)
        assert (target / "shard" if target.is_dir() else target).read_text() == expect
        assert not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize("target_kind,staging_kind,aside_kind",
                         itertools.product([None, *KINDS], KINDS, [None, *KINDS]))
def test_replace_succeeds_over_any_leftover_of_an_earlier_crash(tmp_path, target_kind, staging_kind, aside_kind):
    target = tmp_path / "last.ckpt"
    lay(target, target_kind, "current")
    lay(staging_of(target), staging_kind, "new")
    lay(aside_of(target), aside_kind, "stale")
    replace(staging_of(target), target)
    assert content(target) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# Each state a crash can leave: the checkpoint, the staged save and the aside copy, each as (kind, what it holds) or
# None, from either kind of checkpoint ("current") to either kind of save ("new" once complete, "partial" if cut
# short), and what the rerun must resume from.
def crash_states():
    for before, after in itertools.product(KINDS, KINDS):
        change = f"{before} -> {after}"
        yield f"save cut short ({change})", (before, "current"), (after, "partial"), None, "current"
        yield (f"save cut short beside a stale aside copy ({change})", (before, "current"), (after, "partial"),
               (after, "stale"), "current")
        yield f"between replace's renames ({change})", None, (after, "new"), (before, "current"), "new"
        yield f"aside copy not yet deleted ({change})", (after, "new"), None, (before, "current"), "new"
    for kind in KINDS:
        yield f"aside copy alone ({kind})", None, None, (kind, "current"), "current"
        yield f"first save cut short ({kind})", None, (kind, "partial"), None, None
    yield "no checkpoint yet", None, None, None, None


@pytest.mark.parametrize("target_state,staging_state,aside_state,resumes_from",
                         [pytest.param(*states, id=name) for name, *states in crash_states()])
def test_recover_leaves_the_newest_complete_checkpoint_after_any_crash(tmp_path, target_state, staging_state,
                                                                       aside_state, resumes_from):
    target = tmp_path / "last.ckpt"
    for path, state in [(target, target_state), (staging_of(target), staging_state), (aside_of(target), aside_state)]:
        lay(path, *(state or (None, "")))
    recover(target)
    if resumes_from is None:
        assert not target.exists()
    else:
        assert content(target) == resumes_from
    assert checkpoint_files(tmp_path) == (["last.ckpt"] if resumes_from else [])
    # and the next save swaps in as usual
    lay(staging_of(target), "folder", "next")
    replace(staging_of(target), target)
    assert content(target) == "next" and checkpoint_files(tmp_path) == ["last.ckpt"]


class Unsaveable:
    def __reduce__(self):
        raise OSError("no space left on device")


def test_a_save_cut_short_leaves_the_previous_checkpoint_whole(compose, tmp_path):
    trainer = build_trainer(compose(TINY), tmp_path, [])
    io = trainer.strategy.checkpoint_io
    assert isinstance(io, StagedCheckpointIO)  # what every save of a run goes through, periodic or final
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"weights": torch.ones(3), "step": 1}, last)
    with pytest.raises(OSError, match="no space left"):
        io.save_checkpoint({"weights": torch.zeros(3), "step": Unsaveable()}, last)
    assert staging_of(last).exists()
    saved = torch.load(last)
    assert saved["step"] == 1 and torch.equal(saved["weights"], torch.ones(3))
    recover(last)
    assert checkpoint_files(last.parent) == ["last.ckpt"]


def test_a_run_whose_checkpoint_was_left_aside_resumes_from_the_newest(compose, tmp_path):
    """A real run checkpointed at step 2 and at step 3, then a crash between replace's renames (step 3 staged, step
    2 moved aside, no last.ckpt): the rerun resumes after step 3. With only the aside copy, after step 2."""
    overrides = TINY + ["adapter=lora", "trainer.lightning.max_epochs=2", "trainer.optimizer.lr=5e-3"]
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    fit(compose(overrides), run, stop_at=2)
    step_2 = (tmp_path / "step_2.ckpt")
    step_2.write_bytes(last.read_bytes())
    fit(compose(overrides), run, stop_at=3)
    last.rename(staging_of(last))
    step_2.rename(aside_of(last))
    saved = (staging_of(last).read_bytes(), aside_of(last).read_bytes())

    _, resumed = fit(compose(overrides), run, stop_at=4)
    assert sorted(resumed) == [4]
    assert checkpoint_files(last.parent) == ["last.ckpt"]

    last.unlink()
    aside_of(last).write_bytes(saved[1])
    _, resumed = fit(compose(overrides), run, stop_at=4)
    assert sorted(resumed) == [3, 4]
