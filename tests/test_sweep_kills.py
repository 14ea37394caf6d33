"""A sweep SIGKILLed again and again, relaunched with the same command each time, ends as an uninterrupted one.

The sweep: `python launch.py -m method=rt,it,base` on the tiny model with a checkpoint every step, the ranking
evaluation, and the comparison judged by a real HTTP server on loopback (the canned length judge: a paid API's
model cannot run here). It runs once uninterrupted; then, in the same dir (the first one moved aside), it is
killed once in every stage of every job (training, export, generation, evaluation: each point drawn with a seed
among the file-system changes the uninterrupted sweep made there; the process dies just before the change),
twice while judging (the server kills the launch when the drawn request arrives, before answering it) and once
while the comparison writes its tables, each kill followed by the same command. A kill anywhere between two
changes leaves what a kill just before the second one leaves, torn appends aside (their readers are tested on
torn lines: test_judges.py, test_generate.py, test_ranking.py), so these points stand for every instant of the
sweep. Then every file of the two sweeps must be the same byte for byte (the run logs and the measured training
speed aside; checkpoints by what they hold), and the judge must have answered each request once, across all the
launches.

Kills at file-system changes come from tests/kill_hook/sitecustomize.py, which Python loads in the launched process
(PYTHONPATH): the command is the user's. With RT_LAB_TEST_REPORTS=DIR the kills' log is kept as
DIR/sweep_kills.log (.ci/run prints it)."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from helpers import FAST, REPO, keep_report
from judge_server import KEY_ENV, SECRET, LengthJudgeServer, judge_overrides

SEED = 2024
JOBS = ("0", "1", "2")  # rt, it, base (no training, no export)
JUDGE_KILLS = 2
# the files that differ between two uninterrupted runs too: logs with times and process ids
VOLATILE = re.compile(r"(^|/)launch\.log$")


class KillingJudge(LengthJudgeServer):
    """The canned length judge that, armed, SIGKILLs the launch when the `kill_at`-th judgment request of that
    launch arrives, instead of answering it. `by_prompt` counts the requests it answered."""

    def __init__(self) -> None:
        super().__init__()
        self.victim: int | None = None
        self.kill_at = 0
        self.arrived = 0

    def arm(self, victim: int | None, kill_at: int = 0) -> None:
        with self.lock:
            self.victim, self.kill_at, self.arrived = victim, kill_at, 0

    def handle(self, http) -> None:
        with self.lock:
            self.arrived += 1
            kill = self.victim is not None and self.arrived == self.kill_at
        if kill:
            os.kill(self.victim, signal.SIGKILL)
            return  # unanswered: the connection closes with this handler
        super().handle(http)


@pytest.fixture(scope="module")
def judge() -> Iterator[KillingJudge]:
    server = KillingJudge()
    yield server
    server.close()


# (job, stage) -> what its file-system changes look like; ("", "compare"): the comparison writing its tables
STAGES = {"train": "checkpoints(/|$)", "export": "model(/|$)", "generate": r"(generations\.jsonl|\.model_outputs)",
          "evaluate": "eval(/|$)"}


def stage_pattern(job: str, stage: str) -> str:
    """The changes of a stage, folders made aside: how many there are depends on which exist already."""
    if stage == "compare":
        return r"^(?!os\.mkdir )\S+ comparison/\.?(summary|table)"
    return rf"^(?!os\.mkdir )\S+ {job}/{STAGES[stage]}"


def stage_of(change: str) -> tuple[str, str] | None:
    """(job, stage) of a file-system change a sweep makes, if it is in one of the stages killed."""
    job = re.match(r"^\S+ (\d+)/", change)
    candidates = [(job.group(1), stage) for stage in STAGES] if job else [("", "compare")]
    return next((found for found in candidates if re.search(stage_pattern(*found), change)), None)


def launched(args: list[str], sweep: Path, log: Path, judge: KillingJudge,
             kill: dict | None) -> tuple[int, float, int]:
    """The user's command in a fresh process with the user's environment, the kill hook loaded, and `kill` (a
    file-system point, or a judge request) armed; its exit status, seconds and process id."""
    env = {**os.environ, KEY_ENV: SECRET, "PYTHONPATH": str(REPO / "tests" / "kill_hook"),
           "RT_LAB_KILL_DIR": str(sweep), "RT_LAB_KILL_LOG": str(log), "RT_LAB_OUTPUT_DIR": str(sweep.parent / "out"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("RT_LAB_KILL_AT", None)
    if kill and "match" in kill:
        env["RT_LAB_KILL_AT"] = json.dumps({key: kill[key] for key in ("match", "occurrence")})
    started = time.monotonic()
    with (sweep.parent / f"{sweep.name}.out").open("a") as out:
        process = subprocess.Popen([sys.executable, str(REPO / "launch.py"), *args, f"hydra.sweep.dir={sweep}"],
                                   cwd=sweep.parent, env=env, stdout=out, stderr=subprocess.STDOUT)
        if kill and "request" in kill:
            judge.arm(process.pid, kill["request"])
        else:
            judge.arm(None)
        code = process.wait(timeout=900)
    return code, time.monotonic() - started, process.pid


def draw_kills(changes: list[str], requests: int, rng: random.Random) -> list[dict]:
    """One point per (job, stage) and for the tables, drawn among the uninterrupted sweep's `changes` there, in
    the order the sweep reaches them, with `JUDGE_KILLS` requests before the tables. A point is the m-th change
    of its stage in a launch, counted from the launch's start: each launch enters the stage of its kill afresh."""
    by_stage: dict[tuple[str, str], list[str]] = {}
    for change in changes:
        stage = stage_of(change)
        if stage:
            by_stage.setdefault(stage, []).append(change)
    kills = []
    for (job, stage), seen in by_stage.items():
        occurrence = rng.randint(1, len(seen))
        kills.append({"stage": f"{stage} of job {job}" if job else stage, "match": stage_pattern(job, stage),
                      "occurrence": occurrence})
    first = rng.randint(1, requests - 1)
    second = rng.randint(1, requests - first)  # counted in its own launch, after the first's answered ones
    judging = [{"stage": "judging", "request": first}, {"stage": "judging", "request": second}]
    return kills[:-1] + judging + kills[-1:]  # the tables come after the judging


def files(sweep: Path) -> dict[str, bytes]:
    """Every file of a sweep by its path in it; in metrics.csv the measured speed left out; a checkpoint by what
    it holds (a resumed optimizer's state holds the same, pickled with other references)."""
    found = {}
    for path in sorted(sweep.rglob("*")):
        name = str(path.relative_to(sweep))
        if not path.is_file() or VOLATILE.search(name):
            continue
        if path.name == "metrics.csv":
            found[name] = without_speed(path.read_text()).encode()
        elif path.suffix == ".ckpt":
            found[name] = repr(canonical(torch.load(path, weights_only=False))).encode()
        else:
            found[name] = path.read_bytes()
    return found


def canonical(value: Any) -> Any:
    """A loaded checkpoint as plain values, in its own order: tensors as dtype, shape and bytes."""
    if isinstance(value, torch.Tensor):
        data = value.detach().reshape(-1).view(torch.uint8).numpy().tobytes()
        return "tensor", str(value.dtype), tuple(value.shape), data
    if isinstance(value, dict):
        return "dict", [(repr(key), canonical(item)) for key, item in value.items()]
    if isinstance(value, (list, tuple)):
        return type(value).__name__, [canonical(item) for item in value]
    return repr(value)


def without_speed(metrics: str) -> str:
    rows = list(csv.reader(io.StringIO(metrics)))
    kept = [index for index, column in enumerate(rows[0]) if not column.endswith("_per_s")]
    return "\n".join(",".join(row[index] for index in kept) for row in rows)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, judge) -> dict:
    root = tmp_path_factory.mktemp("sweep_kills")
    ranking = root / "ranking.json"  # rt_lab's own rows: the ranking evaluation needs an Alpaca-style file
    ranking.write_text(json.dumps([{"instruction": f"Name river number {i} of a list of long rivers.", "input": "",
                                    "output": f"River {i} is long and flows into the sea."} for i in range(12)]))
    args = ["-m", "method=rt,it,base", *FAST, "prompts.limit=8", "trainer.optimizer.lr=0.01", "logger=csv",
            "trainer.checkpoint_every_n_steps=1", "eval=ranking", f"eval.ranking.file={ranking}",
            "eval.ranking.limit=6", *judge_overrides(judge), "judge.max_concurrency=1"]

    # both sweeps run in the same dir, the uninterrupted one moved aside after: files that hold their own path
    # (a checkpoint, Hydra's config) then compare byte for byte
    code, seconds, _ = launched(args, root / "sweep", root / "uninterrupted.jsonl", judge, None)
    assert code == 0, (root / "sweep.out").read_text()[-3000:]
    (root / "sweep").rename(root / "uninterrupted")
    reference_requests = dict(judge.by_prompt)
    judge.by_prompt.clear()
    changes = [json.loads(line)["change"] for line in (root / "uninterrupted.jsonl").read_text().splitlines()]
    kills = draw_kills(changes, sum(reference_requests.values()), random.Random(SEED))

    lines = [f"uninterrupted sweep: {seconds:.1f} s, {sum(reference_requests.values())} judge requests, "
             f"{len(changes)} file-system changes"]
    log = root / "killed.jsonl"
    for number, kill in enumerate(kills, start=1):
        code, seconds, pid = launched(args, root / "sweep", log, judge, kill)
        killed_at = next((line["killed"] for line in map(json.loads, log.read_text().splitlines())
                          if line["pid"] == pid and "killed" in line), None)
        where = f"request {kill['request']}" if "request" in kill else \
            f"change {kill['occurrence']} of its stage, before {killed_at}"
        lines.append(f"kill {number:2d}: {kill['stage']:<17} at {where}: exit {code}, {seconds:.1f} s")
        assert code == -signal.SIGKILL, (lines[-1], (root / "sweep.out").read_text()[-3000:])
        if "match" in kill:
            assert killed_at and re.search(kill["match"], killed_at), (kill, killed_at)
    code, seconds, _ = launched(args, root / "sweep", log, judge, None)
    lines.append(f"relaunch after the last kill: exit {code}, {seconds:.1f} s")
    assert code == 0, (root / "sweep.out").read_text()[-3000:]
    keep_report("sweep_kills.log", "\n".join(lines))
    return {"root": root, "kills": kills, "reference_requests": reference_requests,
            "requests": dict(judge.by_prompt)}


def test_every_stage_is_killed_and_ten_kills_at_least(sweeps):
    stages = {kill["stage"].split(" of ")[0] for kill in sweeps["kills"]}
    assert stages == {"train", "export", "generate", "evaluate", "judging", "compare"}
    assert len(sweeps["kills"]) >= 10
    assert {f"{stage} of job {job}" for job in JOBS for stage in ("generate", "evaluate")} <= \
        {kill["stage"] for kill in sweeps["kills"]}


def test_every_file_is_the_uninterrupted_sweeps(sweeps):
    root = sweeps["root"]
    uninterrupted, killed = files(root / "uninterrupted"), files(root / "sweep")
    assert sorted(killed) == sorted(uninterrupted)
    assert [name for name in uninterrupted if killed[name] != uninterrupted[name]] == []
    for table in ("comparison/summary.csv", "comparison/table.csv", "comparison/summary.md"):
        assert table in killed


def test_no_judge_request_is_answered_twice(sweeps):
    requests, reference = sweeps["requests"], sweeps["reference_requests"]
    assert len(reference) > JUDGE_KILLS
    assert max(requests.values()) == 1 and max(reference.values()) == 1
    assert requests == reference  # the same requests, each answered once across every launch
