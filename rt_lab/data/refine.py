"""Refined responses (An et al. §5.1): every training response (a refusal mix's too) rewritten by a chat model for
clarity, structure and tone, its content kept, before a method trains on the set (`dataset/refine=hf_local|openai`,
rt_lab's own prompt in conf/dataset/refine/_base.yaml).

The refiner is any judge backend (rt_lab.judges: `openai` for a chat-completions server, `hf_local` for a model in
this process), asked greedily for up to `max_tokens`. Its rewrite is the text after the first line that starts
with the prompt's marker; a reply without one (or with nothing after it) keeps the original response, counted.
Every reply is cached in the refine dir (rt_lab.layout.RefineDir) by refiner, prompt and response, so a rerun, or
the other runs of a sweep training on the same rows, ask for nothing already asked; the refined set is written
there as a `messages` JSONL file any run can train on (dataset.file=)."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rt_lab.config.dataset import RefineConfig
from rt_lab.data.rows import Message, Row
from rt_lab.io import atomic_write_json, atomic_write_text, exclusive
from rt_lab.judges import JudgeError, Reply, build_judge, cache_key, judge_each
from rt_lab.judges.cache import AnswerCache
from rt_lab.layout import RefineDir

log = logging.getLogger(__name__)

NO_MARKER = "no marker line"
NOTHING_AFTER_MARKER = "nothing after the marker"


@dataclass(frozen=True)
class Response:
    """One assistant message to rewrite: where it is and what the refiner is shown."""

    row: int
    position: int  # in the row's messages
    request: str  # the user turn before it ("" when there is none)
    text: str


def responses(rows: Sequence[Row]) -> list[Response]:
    """Every non-empty assistant message of the rows, with the user turn it answers."""
    found = []
    for row_index, row in enumerate(rows):
        request = ""
        for position, message in enumerate(row.messages):
            if message.role == "user":
                request = message.content
            elif message.role == "assistant" and message.content.strip():
                found.append(Response(row_index, position, request, message.content))
    return found


def refiner_identity(backend: Any) -> dict[str, Any]:
    """What of the backend config changes a rewrite (part of every cache key): the backend and its model, not
    where it is served or how patiently it is asked."""
    model = backend.model
    if not isinstance(model, str):  # hf_local: a `model/` config
        model = model.get("name_or_path") or model.name
    return {"backend": backend.name, "model": model}


def check_prompt(cfg: RefineConfig) -> None:
    text = cfg.prompt.get("text") or ""
    missing = [field for field in ("{request}", "{response}") if field not in text]
    if missing:
        raise ValueError(f"dataset.refine.prompt.text lacks {missing}: it must show the refiner the request and the "
                         "response to rewrite")
    if not str(cfg.prompt.get("marker") or "").strip():
        raise ValueError("dataset.refine.prompt.marker is empty: the rewrite is read from after a marker line")
    if not cfg.max_tokens or cfg.max_tokens < 1:
        raise ValueError(f"dataset.refine.max_tokens={cfg.max_tokens}: give the rewrite room (An et al.: 8192)")


def prompt_messages(cfg: RefineConfig, response: Response) -> list[dict[str, str]]:
    # replace, not str.format: the template may show braces of its own
    text = cfg.prompt.text.replace("{request}", response.request).replace("{response}", response.text)
    return [{"role": "user", "content": text}]


def extract_rewrite(reply: str, marker: str) -> tuple[str | None, str | None]:
    """(the rewrite, None), or (None, why there is none): the text after the first line that starts with the
    marker (case-insensitive; Markdown emphasis or heading marks around it are ignored), stripped."""
    found = re.search(rf"^[ \t#*_>]*{re.escape(marker.strip())}[ \t*_]*", reply, re.IGNORECASE | re.MULTILINE)
    if found is None:
        return None, NO_MARKER
    rewrite = reply[found.end():].strip()
    return (rewrite, None) if rewrite else (None, NOTHING_AFTER_MARKER)


@dataclass(frozen=True)
class RefinedSet:
    rows: list[Row]
    path: Path  # the rows as a `messages` JSONL file
    stats: dict[str, Any]  # what was rewritten, kept and asked for (also beside the file, RefineDir.stats)


def refine_rows(rows: Sequence[Row], cfg: RefineConfig, dataset: str) -> RefinedSet:
    """The rows with every response rewritten as `cfg` (dataset.refine) says, written with their stats to the
    refine dir. Raises JudgeError when replies are missing after every retry (the others are cached: a rerun
    asks only for the missing ones)."""
    check_prompt(cfg)
    identity = refiner_identity(cfg.backend)
    marker = cfg.prompt.marker
    found = responses(rows)
    asked_as = [cache_key(identity, cfg.prompt.version, cfg.max_tokens, prompt_messages(cfg, response))
                for response in found]
    contents = [[row.id, [[m.role, m.content] for m in row.messages]] for row in rows]
    stem = f"{dataset}-{cache_key(identity, cfg.prompt.version, cfg.max_tokens, marker, contents)[:12]}"
    place = RefineDir(Path(cfg.dir))
    with exclusive(place.lock(stem), f"refining {dataset} with {identity}"):
        replies, asked = ask_missing(cfg, found, asked_as, place)
    refined, flags, kept = rewritten_rows(rows, found, [replies[key] for key in asked_as], marker)
    write_refined_set(place.refined_set(stem), refined, flags)
    stats = {"dataset": dataset, "refined_set": str(place.refined_set(stem)), "refiner": identity,
             "prompt": cfg.prompt.version, "max_tokens": cfg.max_tokens, "rows": len(rows),
             "responses": len(found), "rewritten": len(found) - sum(kept.values()), "kept_original": dict(kept),
             "asked": asked, "cached": len(set(asked_as)) - asked}
    atomic_write_json(place.stats(stem), stats)
    log.info("dataset %s refined by %s: %d of %d responses rewritten, %d kept (%s); asked the refiner for %d, "
             "%d cached; refined set %s (stats: %s)", dataset, identity, stats["rewritten"], len(found),
             sum(kept.values()), dict(kept) or "none", asked, stats["cached"], place.refined_set(stem),
             place.stats(stem))
    if kept:
        log.warning("dataset %s: %d of %d responses kept their original text (%s)", dataset, sum(kept.values()),
                    len(found), dict(kept))
    return RefinedSet(refined, place.refined_set(stem), stats)


def ask_missing(cfg: RefineConfig, found: Sequence[Response], asked_as: Sequence[str],
                place: RefineDir) -> tuple[dict[str, Reply], int]:
    """The reply of every key, and how many were asked now: the backend is built only when some are missing."""
    unique = list(dict.fromkeys(asked_as))  # the same response twice is asked once
    cache = AnswerCache(place.rewrites, kind=Reply)
    missing = [key for key in unique if cache.get(key) is None]
    if not missing:
        return {key: cache.get(key) for key in unique}, 0
    shown = dict(zip(asked_as, found))
    backend = build_judge(cfg.backend)
    answers = judge_each(backend, unique, lambda index: backend.generate(prompt_messages(cfg, shown[unique[index]]),
                                                                          cfg.max_tokens),
                         place.rewrites, "responses to rewrite", kind=Reply)
    failed = [reply.reason for reply in answers if not reply.final]
    if failed:
        raise JudgeError(f"{len(failed)} of {len(unique)} responses got no rewrite from the refiner ({failed[0]}); "
                         f"the others are cached in {place.rewrites}; rerun to ask again")
    return dict(zip(unique, answers)), len(missing)


def rewritten_rows(rows: Sequence[Row], found: Sequence[Response], replies: Sequence[Reply],
                   marker: str) -> tuple[list[Row], list[list[bool]], Counter]:
    """The rows with each response replaced by its rewrite where the reply has one; per row, whether each of
    its responses was rewritten; and why the others were kept."""
    messages = [list(row.messages) for row in rows]
    flags: list[list[bool]] = [[] for _ in rows]
    kept: Counter = Counter()
    for response, reply in zip(found, replies):
        rewrite, why = extract_rewrite(reply.text, marker) if reply.answered else (None, reply.reason)
        if rewrite is None:
            kept[why] += 1
        else:
            messages[response.row][response.position] = Message("assistant", rewrite)
        flags[response.row].append(rewrite is not None)
    return [Row(row.id, tuple(new)) for row, new in zip(rows, messages)], flags, kept


def write_refined_set(path: Path, rows: Sequence[Row], flags: Sequence[list[bool]]) -> None:
    """The refined set as `messages` records (`refined`: per response, whether it was rewritten)."""
    lines = [json.dumps({"id": row.id, "messages": [{"role": m.role, "content": m.content} for m in row.messages],
                         "refined": rewritten}, ensure_ascii=False) for row, rewritten in zip(rows, flags)]
    atomic_write_text(path, "\n".join(lines) + "\n")
