"""Reading the record files data comes in (JSON, JSONL, CSV, text) and atomically writing the JSON/JSONL files
every stage produces."""

from __future__ import annotations

import csv
import fcntl
import json
import logging
import os
from contextlib import contextmanager
from importlib import resources
from io import StringIO
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` so readers see either the old file or the whole new one, never a torn file. The new one is
    staged beside it as `.NAME.tmp`, under a lock: a crash leaves at most that one file, which the next write of
    the same file reuses (its name is fixed, so crashes do not pile up), and processes writing the same file take
    turns. The file gets the usual permissions (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    while True:
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not same_file(fd, staging):
                continue  # the writer before moved it into place while this one waited: stage anew
            try:
                os.ftruncate(fd, 0)
                with os.fdopen(os.dup(fd), "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(staging, path)
            except BaseException:
                staging.unlink(missing_ok=True)
                raise
            return
        finally:
            os.close(fd)


def same_file(fd: int, path: Path) -> bool:
    """Whether the open `fd` is still the file at `path`."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def exclusive(path: str | Path, why: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block: jobs that would do the same work
    take turns, the later one finding it done. `why` says what the lock guards, for the waiting job's log."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:  # the lock goes with the file's closing
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s: another job holds it (%s)", path, why)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def package_path(file: str) -> Path:
    """`pkg://sample_data/x.jsonl` names a file shipped inside rt_lab; anything else is a filesystem path."""
    if file.startswith("pkg://"):
        return Path(str(resources.files("rt_lab").joinpath(file.removeprefix("pkg://"))))
    return Path(file).expanduser()


def read_text(path: Path) -> str:
    """A file's UTF-8 text; a missing file, a directory or bytes that are not UTF-8 are errors naming the file."""
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; give a file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return decode(path, path.read_bytes())


def decode(path: Path, data: bytes) -> str:
    """The UTF-8 text of `data` read from `path`; bytes that are not UTF-8 are an error naming file and line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{path}: line {line}: not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}); "
                         f"save it as UTF-8") from err


def read_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (row number, record) from a JSON list (number: index), JSONL (line), CSV (header, then row 1...), text
    (one {"prompt": line} a line), or a JSON object of instruction/input lists (safety-tuned LLaMAs' evaluation
    files). Every error names the file, and the line or row where there is one."""
    path = Path(path)
    text = read_text(path)
    if path.suffix == ".csv":
        yield from csv_records(path, text)
    elif path.suffix == ".txt":
        yield from ((number, {"prompt": line}) for number, line in enumerate(text.splitlines(), start=1)
                    if line.strip())
    elif path.suffix == ".json" or text.lstrip().startswith("["):
        yield from json_records(path, text)
    else:
        yield from jsonl_records(path, text)


def json_records(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as err:
        hint = "; one object a line is JSONL: name the file .jsonl" if err.msg == "Extra data" else ""
        raise ValueError(f"{path}: line {err.lineno}: invalid JSON ({err.msg}{hint})") from err
    if isinstance(whole, dict) and isinstance(whole.get("instructions"), list):
        inputs = whole.get("inputs") or []  # may be shorter than instructions (empty in most of those files)
        whole = [{"instruction": instruction, "input": inputs[index] if index < len(inputs) else None}
                 for index, instruction in enumerate(whole["instructions"])]
    if not isinstance(whole, list):
        keys = f" with keys {sorted(whole)[:8]}" if isinstance(whole, dict) else ""
        raise ValueError(f"{path}: a JSON {type(whole).__name__}{keys}, expected a list of records "
                         f"(one object a line: name the file .jsonl)")
    for index, record in enumerate(whole):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: item {index} is a {type(record).__name__}, expected an object")
        yield index, record


def jsonl_records(path: Path, text: str) -> Iterator[tuple[int, dict]]:
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


def csv_records(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    # strict: an unclosed quote is an error at its line, not a silently merged field
    reader = csv.DictReader(StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames or []
        if len(set(header)) != len(header) or not all(header):
            raise ValueError(f"{path}: header row {header}: column names must be non-empty and distinct")
        for number, record in enumerate(reader, start=1):
            if None in record:
                raise ValueError(f"{path} row {number}: more fields than the header has columns")
            if None in record.values():
                raise ValueError(f"{path} row {number}: fewer fields than the header has columns")
            # upstream copies differ in CRLF/LF inside quoted fields; a prompt must not
            yield number, {key: value.replace("\r\n", "\n") for key, value in record.items()}
    except csv.Error as err:
        raise ValueError(f"{path}: after line {reader.line_num}: bad CSV ({err})") from err


def read_append_log(path: str | Path, read_only: bool = False) -> list[dict]:
    """Records of a JSONL file that jobs append to as they work. A torn last line (a crash mid-write) is cut
    off so appending continues on a fresh line, or, `read_only` (another job's file, read and never written),
    skipped with a warning naming the file; a malformed line anywhere else is an error naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open("rb") as handle:
        # the lock writers hold while they append a line (AnswerCache): a line half written by another job now is
        # waited for, not taken for a torn one
        fcntl.flock(handle, fcntl.LOCK_SH if read_only else fcntl.LOCK_EX)
        data = handle.read()
        complete = data[:data.rfind(b"\n") + 1]
        if len(complete) < len(data):
            if read_only:
                log.warning("%s: skipping its torn last line (%d bytes, a crash mid-write); the file is only read "
                            "here, so it is left as it is", path, len(data) - len(complete))
            else:
                os.truncate(path, len(complete))
    return [record for _, record in jsonl_records(path, decode(path, complete))]
