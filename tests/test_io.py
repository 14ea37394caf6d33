"""Atomic writes (rt_lab/io.py): readers see the old file or the whole new one; a crash leaves at most one staging
file, which the next write reuses; writers of the same file in several processes take turns."""

from __future__ import annotations

import multiprocessing
import os
import stat

from rt_lab.io import atomic_write_bytes, atomic_write_text


def test_a_write_leaves_only_the_file_with_the_usual_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "out" / "result.json", "{}\n")
    finally:
        os.umask(previous)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["result.json"]
    assert stat.S_IMODE((tmp_path / "out" / "result.json").stat().st_mode) == 0o644


def test_what_a_crash_left_is_reused_by_the_next_write(tmp_path):
    target = tmp_path / "scores.jsonl"
    target.write_text("old\n")
    (tmp_path / ".scores.jsonl.tmp").write_text("a longer half-written new version, cut by a crash")
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.jsonl"]


def write_many(path: str, fill: bytes, times: int) -> None:
    for _ in range(times):
        atomic_write_bytes(path, fill * (1 << 16))


def test_processes_writing_the_same_file_take_turns(tmp_path):
    target = tmp_path / "shared.bin"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=write_many, args=(str(target), fill, 150)) for fill in (b"a", b"bb")]
    for writer in writers:
        writer.start()
    while any(writer.is_alive() for writer in writers):
        if target.exists():
            data = target.read_bytes()
            assert data in (b"a" * (1 << 16), b"bb" * (1 << 16)), len(data)  # never torn, never mixed
    assert [writer.exitcode for writer in writers] == [0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]
