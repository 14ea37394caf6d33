"""The judgment cache and the run over many judged items: every judge use (pairwise comparison, the safety
evaluation's refusal classifier) asks through `judge_each`, which caches each finished judgment at once, asks only
for what is missing on a rerun, limits concurrency and stops cleanly on a fatal `JudgeError`."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from rt_lab.io import read_append_log
from rt_lab.judges.base import Judge, JudgeError, Judgment

log = logging.getLogger(__name__)


def cache_key(*parts: Any) -> str:
    """The cache key of one judged item: everything that changes the answer (the judge's identity included)."""
    payload = json.dumps(parts, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgmentCache:
    """Finished judgments, one JSON line each ({key, value, reason}), appended and flushed as they finish (read
    back with `read_append_log`, which survives a torn last line)."""

    def __init__(self, path: str | Path, also: Sequence[str | Path] = ()) -> None:
        """`also`: other caches whose judgments count as made (read, never written): the same pair judged
        elsewhere, e.g. a run's last epoch judged during training, is not asked again."""
        self.path = Path(path)
        self.entries = {key: judgment for source in (*also, path) for key, judgment in self._read(Path(source))}
        self._lock = threading.Lock()

    @staticmethod
    def _read(path: Path) -> Iterator[tuple[str, Judgment]]:
        for number, record in enumerate(read_append_log(path), start=1):
            missing = [name for name in ("key", "value", "reason") if name not in record]
            if missing:
                raise ValueError(f"{path}: line {number} lacks {missing}; expected an object with key, value, "
                                 "reason")
            yield record["key"], Judgment(record["value"], record["reason"])

    def get(self, key: str) -> Judgment | None:
        return self.entries.get(key)

    def append(self, key: str, judgment: Judgment) -> None:
        line = json.dumps({"key": key, "value": judgment.value, "reason": judgment.reason})
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
                handle.flush()
            self.entries[key] = judgment


def judge_each(judge: Judge, keys: Sequence[str], ask: Callable[[int], Judgment], cache_path: str | Path,
               what: str = "items", also_cached: Sequence[str | Path] = ()) -> list[Judgment]:
    """One Judgment per key, in order: cached items are never asked again; the others are asked through
    `ask(index)` (judge.max_concurrency at a time) and cached as soon as each finishes, so a rerun after a crash
    or the spend cap asks only for the missing ones. Transport failures come back with final=False, uncached."""
    cache = JudgmentCache(cache_path, also_cached)
    results: list[Judgment | None] = [cache.get(key) for key in keys]
    todo = [index for index, judgment in enumerate(results) if judgment is None]
    log.info("judging %d %s (%d cached) with %s", len(todo), what, len(keys) - len(todo), judge.identity())
    stopped = threading.Event()

    def work(index: int) -> Judgment | None:
        if stopped.is_set():  # a fatal error in another item: ask nothing more, leave this one to the rerun
            return None
        try:
            judgment = ask(index)
        except JudgeError:
            stopped.set()
            raise
        if judgment.final:
            cache.append(keys[index], judgment)
        return judgment

    with ThreadPoolExecutor(max_workers=max(1, judge.max_concurrency)) as pool:
        futures = {pool.submit(work, index): index for index in todo}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
        except BaseException as err:
            pool.shutdown(wait=True, cancel_futures=True)  # running items finish and are cached; no new calls
            if not isinstance(err, JudgeError):
                raise
            missing = sum(cache.get(keys[index]) is None for index in todo)
            raise type(err)(f"{err}; {len(keys) - missing} of {len(keys)} {what} are judged and cached in "
                            f"{cache_path}; rerun to judge the other {missing}") from err
    failed = [(index, judgment.reason) for index, judgment in enumerate(results) if judgment.value is None]
    if failed:
        log.warning("%d of %d judgments of %s unparsable: %s", len(failed), len(keys), what,
                    "; ".join(f"item {index}: {reason}" for index, reason in failed[:10]))
    return results  # type: ignore[return-value]  (every item is filled above)
