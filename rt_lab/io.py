"""Reading and atomically writing the JSON/JSONL files every stage produces."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` so readers see either the old file or the whole new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line or index number, record) from a JSON list or a JSONL file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON list ({err})") from err
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise ValueError(f"{path}: item {index} is a {type(record).__name__}, expected an object")
            yield index, record
        return
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {line_number}: invalid JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {line_number}: expected a JSON object, got {type(record).__name__}")
        yield line_number, record


def read_append_log(path: str | Path) -> list[dict]:
    """Records of a JSONL file that a job appends to as it works. A torn last line (a crash mid-write) is cut
    off so appending continues on a fresh line; a malformed line anywhere else is an error naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
    return [record for _, record in read_records(path)]
