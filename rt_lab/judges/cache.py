"""The answer cache and the run over many items a judge answers: every judge use (pairwise comparison, the safety
evaluation's refusal classifier, the rewriting of training responses) asks through `judge_each`, which caches each
finished answer at once, asks only for what is missing on a rerun, limits concurrency and stops cleanly on a fatal
`JudgeError`."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

from rt_lab.io import read_append_log
from rt_lab.judges.base import Judge, JudgeError, Judgment, Reply

log = logging.getLogger(__name__)

Answer = TypeVar("Answer", Judgment, Reply)


def cache_key(*parts: Any) -> str:
    """The cache key of one judged item: everything that changes the answer (the judge's identity included)."""
    payload = json.dumps(parts, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class AnswerCache(Generic[Answer]):
    """Finished answers, one JSON line each (a Judgment as {key, value, reason}, a Reply as {key, text, reason}),
    appended and flushed as they finish (read back with `read_append_log`, which cuts a torn last line off this
    cache and skips one in an `also` cache, never writing to those). Appends hold an exclusive lock on the file,
    so jobs sharing a cache never interleave their lines."""

    def __init__(self, path: str | Path, also: Sequence[str | Path] = (), kind: type[Answer] = Judgment) -> None:
        """`also`: other caches whose answers count as made (read, never written): the same pair judged
        elsewhere, e.g. a run's last epoch judged during training, is not asked again."""
        self.path = Path(path)
        self.kind = kind
        # what a line stores: every field but `final` (only final answers are stored)
        self.fields = [field.name for field in dataclasses.fields(kind) if field.name != "final"]
        self.entries: dict[str, Answer] = {}
        for source in also:
            self.entries.update(self._read(Path(source), read_only=True))
        self.entries.update(self._read(self.path))
        self._lock = threading.Lock()

    def _read(self, path: Path, read_only: bool = False) -> Iterator[tuple[str, Answer]]:
        for number, record in enumerate(read_append_log(path, read_only), start=1):
            missing = [name for name in ("key", *self.fields) if name not in record]
            if missing:
                raise ValueError(f"{path}: line {number} lacks {missing}; expected an object with key, "
                                 f"{', '.join(self.fields)}")
            yield record["key"], self.kind(**{name: record[name] for name in self.fields})

    def get(self, key: str) -> Answer | None:
        return self.entries.get(key)

    def append(self, key: str, answer: Answer) -> None:
        line = json.dumps({"key": key, **{name: getattr(answer, name) for name in self.fields}}, ensure_ascii=False)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # released on close
                handle.write(line + "\n")
                handle.flush()
            self.entries[key] = answer


def judge_each(judge: Judge, keys: Sequence[str], ask: Callable[[int], Answer], cache_path: str | Path,
               what: str = "items", also_cached: Sequence[str | Path] = (),
               kind: type[Answer] = Judgment) -> list[Answer]:
    """One answer (a `kind`: Judgment, or Reply for generated text) per key, in order: cached items are never
    asked again; the others are asked through `ask(index)` (judge.max_concurrency at a time) and cached as soon as
    each finishes, so a rerun after a crash or the spend cap asks only for the missing ones. Transport failures
    come back with final=False, uncached."""
    cache = AnswerCache(cache_path, also_cached, kind)
    results: list[Answer | None] = [cache.get(key) for key in keys]
    todo = [index for index, answer in enumerate(results) if answer is None]
    log.info("asking for %d %s (%d cached) with %s", len(todo), what, len(keys) - len(todo), judge.identity())
    stopped = threading.Event()
    every = max(1, len(todo) // 10)  # a progress line each tenth of the work

    def work(index: int) -> Answer | None:
        if stopped.is_set():  # a fatal error in another item: ask nothing more, leave this one to the rerun
            return None
        try:
            answer = ask(index)
        except JudgeError:
            stopped.set()
            raise
        if answer.final:
            cache.append(keys[index], answer)
        return answer

    with ThreadPoolExecutor(max_workers=max(1, judge.max_concurrency)) as pool:
        futures = {pool.submit(work, index): index for index in todo}
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                results[futures[future]] = future.result()
                if done % every == 0 and done < len(todo):
                    log.info("%d of %d %s answered", done, len(todo), what)
        except BaseException as err:
            pool.shutdown(wait=True, cancel_futures=True)  # running items finish and are cached; no new calls
            if not isinstance(err, JudgeError):
                raise
            missing = sum(cache.get(keys[index]) is None for index in todo)
            raise type(err)(f"{err}; {len(keys) - missing} of {len(keys)} {what} are answered and cached in "
                            f"{cache_path}; rerun to ask for the other {missing}") from err
    failed = [(index, answer.reason) for index, answer in enumerate(results) if not answer.answered]
    if failed:
        log.warning("%d of %d answers for %s unusable: %s", len(failed), len(keys), what,
                    "; ".join(f"item {index}: {reason}" for index, reason in failed[:10]))
    return results  # type: ignore[return-value]  (every item is filled above)
