"""Loaded by every Python process started with this folder on PYTHONPATH (tests/test_sweep_kills.py): logs each
file-system change under $RT_LAB_KILL_DIR before it happens, and SIGKILLs the process at a chosen one.

    RT_LAB_KILL_DIR=SWEEP RT_LAB_KILL_LOG=FILE [RT_LAB_KILL_AT='{"match": REGEX, "occurrence": M}']

Each change (an open for writing, rename, replace, remove, rmdir, mkdir, rmtree) is appended to FILE as
{"pid", "change": "EVENT PATH"} (paths relative to SWEEP) before it is made. With RT_LAB_KILL_AT, the M-th change
in this process whose "EVENT PATH" matches REGEX is not made: FILE gets {"pid", "killed": "EVENT PATH"} and the
process SIGKILLs itself. Nothing else about the process changes: the command under test is the user's."""

from __future__ import annotations

import json
import os
import re
import signal
import sys

WRITE_MODES = set("wax+")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
CHANGES = {"os.rename", "os.replace", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree"}


class KillHook:
    def __init__(self, folder: str, log: str, kill_at: dict | None) -> None:
        self.folder = os.path.realpath(folder) + os.sep
        self.log = open(log, "a", buffering=1)  # noqa: SIM115 (open for the process's life)
        self.kill_at = kill_at
        self.pattern = re.compile(kill_at["match"]) if kill_at else None
        self.seen = 0
        self.busy = False  # the hook's own writes are not events

    def __call__(self, event: str, args: tuple) -> None:
        if self.busy:
            return
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int) or not ((mode is None and flags & WRITE_FLAGS)
                                             or (mode is not None and WRITE_MODES & set(str(mode)))):
                return
        elif event not in CHANGES or (len(args) > 1 and args[-1] not in (None, -1)):
            return  # not a change, or a name relative to a folder's descriptor (inside an rmtree already logged)
        relative = self.relative(args[0])
        if relative is None:
            return
        if event in ("os.rename", "os.replace"):
            relative += f" -> {self.relative(args[1]) or args[1]}"
        self.busy = True
        try:
            self.record(f"{event} {relative}")
        finally:
            self.busy = False

    def relative(self, path: object) -> str | None:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return None
        absolute = os.path.abspath(os.fsdecode(path))
        return absolute[len(self.folder):] if absolute.startswith(self.folder) else None

    def record(self, change: str) -> None:
        if self.pattern is not None and self.pattern.search(change):
            self.seen += 1
            if self.seen == self.kill_at["occurrence"]:
                self.log.write(json.dumps({"pid": os.getpid(), "killed": change}) + "\n")
                os.kill(os.getpid(), signal.SIGKILL)
        self.log.write(json.dumps({"pid": os.getpid(), "change": change}) + "\n")


if os.environ.get("RT_LAB_KILL_DIR") and os.environ.get("RT_LAB_KILL_LOG"):
    spec = os.environ.get("RT_LAB_KILL_AT")
    sys.addaudithook(KillHook(os.environ["RT_LAB_KILL_DIR"], os.environ["RT_LAB_KILL_LOG"],
                              json.loads(spec) if spec else None))
