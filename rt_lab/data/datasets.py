"""Training datasets: where rows come from (hub, data-dir mirror, local file) and how each source's records
become `Row`s. Add a source format with `@register_format("name")`."""

from __future__ import annotations

import ast
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from omegaconf import OmegaConf

from rt_lab.io import read_records
from rt_lab.paths import package_path
from rt_lab.registry import Registry
from rt_lab.data.rows import Row, RowError, make_row

log = logging.getLogger(__name__)

Records = Iterable[tuple[int, dict]]
Format = Callable[[Records, str, "LoadStats"], Iterator[Row]]
FORMATS = Registry("dataset format")
register_format = FORMATS.register
SAMPLERS = Registry("dataset sampler")  # dataset.sample.how: (rows in the source, n, seed) -> row indices


@dataclass
class LoadStats:
    """What a load kept and why it left rows out; logged so no row disappears silently."""

    read: int = 0
    kept: int = 0
    left_out: dict[str, int] = field(default_factory=dict)

    def leave_out(self, reason: str) -> None:
        self.left_out[reason] = self.left_out.get(reason, 0) + 1


def per_record(build: Callable[[dict], list[dict] | None]) -> Format:
    """Lift `record -> messages` (None = left out by the format's selection rule) to a whole-source format."""

    def stream(records: Records, source: str, stats: LoadStats) -> Iterator[Row]:
        for index, record in records:
            where = f"{source} row {index}"
            try:
                messages = build(record)
            except KeyError as err:
                raise RowError(f"{where}: missing field {err}; fields present: {sorted(record)}") from err
            except (TypeError, ValueError, SyntaxError) as err:
                raise RowError(f"{where}: {type(err).__name__}: {err}") from err
            if messages is None:
                stats.leave_out(f"{build.__name__}: selection rule")
                continue
            yield make_row(record.get("id", f"{index}"), messages, where)

    stream.__name__ = build.__name__
    return stream


def turn(instruction: str, response: str) -> list[dict]:
    return [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]


def joined(instruction: str, extra: str | None) -> str:
    """Alpaca/Dolly convention: an input or context follows the instruction after a blank line."""
    return f"{instruction}\n\n{extra}" if extra else instruction


@register_format("messages")
@per_record
def messages(record: dict) -> list[dict]:
    return record["messages"]


@register_format("lima_conversations")
@per_record
def lima_conversations(record: dict) -> list[dict]:
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(record["conversations"])]


@register_format("alpaca")
@per_record
def alpaca(record: dict) -> list[dict]:
    return turn(joined(record["instruction"], record.get("input")), record["output"])


@register_format("dolly")
@per_record
def dolly(record: dict) -> list[dict]:
    return turn(joined(record["instruction"], record.get("context")), record["response"])


@register_format("gsm8k")
@per_record
def gsm8k(record: dict) -> list[dict]:
    return turn(record["question"], record["answer"])


@register_format("mbpp")
@per_record
def mbpp(record: dict) -> list[dict]:
    return turn(record["text"], record["code"])


@register_format("poetry")
@per_record
def poetry(record: dict) -> list[dict] | None:
    if record["poem name"] is None:  # H keeps named poems only (571 of the split)
        return None
    return turn("Write a poem called " + record["poem name"], record["content"])


@register_format("recipes")
@per_record
def recipes(record: dict) -> list[dict]:
    ingredients = ast.literal_eval(record["Cleaned_Ingredients"])
    bullets = "".join(" - " + item + "\n" for item in ingredients)
    return turn("Recipe for " + record["Title"], bullets + "\n\n" + record["Instructions"])


@register_format("chess")
def chess(records: Records, source: str, stats: LoadStats) -> Iterator[Row]:
    """PGN text rows: a WhiteElo line and a BlackElo line, then the movetext (starting `1. `) make one game."""
    white = black = None
    for index, record in records:
        line = record["text"].strip() if isinstance(record.get("text"), str) else None
        if line is None:
            raise RowError(f"{source} row {index}: expected a text field with one PGN line")
        if line.startswith("[WhiteElo "):
            white = line
        elif line.startswith("[BlackElo "):
            black = line
        elif line.startswith("1. "):
            if white is None or black is None:
                stats.leave_out("chess: game without both Elo headers")
            else:
                yield make_row(f"game-{index}", turn(white + "\n" + black + "\n", line), f"{source} row {index}")
            white = black = None


def resolve_source(cfg: Any, data_dir: str | None, kind: str = "dataset") -> tuple[str, Callable[[], Records], str]:
    """Pick where a dataset's (or prompt set's) records come from: explicit file > data-dir mirror > hub.
    Returns (source name, record reader, format name)."""
    name = f"{kind}={cfg.name}"
    if OmegaConf.is_missing(cfg, "file"):
        raise ValueError(f"{name} needs a file: add {kind}.file=PATH")
    if cfg.get("file"):
        path = package_path(cfg.file)
        return str(path), lambda: read_records(path), cfg.get("format") or cfg.mirror.format
    if data_dir:
        if not cfg.get("mirror"):
            raise FileNotFoundError(
                f"{name}: paths.data_dir is set but there is no local mirror of it; "
                f"give a file with {kind}.file=PATH (format {cfg.hub.format!r})"
            )
        path = Path(data_dir).expanduser() / cfg.mirror.file
        if not path.is_file():
            raise FileNotFoundError(f"{name}: paths.data_dir={data_dir} but {path} does not exist")
        return str(path), lambda: read_records(path), cfg.mirror.format
    if not cfg.get("hub"):
        raise ValueError(f"{name}: no hub id, no mirror and no file configured")
    hub = cfg.hub
    source = f"{hub.path}" + (f"/{hub.name}" if hub.get("name") else "") + f" [{hub.split}]"

    def hub_records() -> Records:
        import datasets

        table = datasets.load_dataset(hub.path, hub.get("name"), split=hub.split)
        return enumerate(table)

    return source, hub_records, hub.format


def selected(records: Records, select: Any, source: str, stats: LoadStats) -> Iterator[tuple[int, dict]]:
    """Keep records whose fields fall in inclusive [lo, hi] ranges (e.g. MBPP's train split is task_id 601-974)."""
    for index, record in records:
        stats.read += 1
        if select:
            outside = [key for key, (lo, hi) in select.items() if not lo <= record.get(key, lo - 1) <= hi]
            if outside:
                stats.leave_out(f"outside select {outside[0]}")
                continue
        yield index, record


def refusal_rows(cfg: Any, count: int, data_dir: str | None) -> list[Row]:
    """An et al.'s refusal mix: the safety examples whose answer matches `keep_if_output_matches` (case-folded),
    in a `random.seed(seed)` shuffle, first `count` — the order their code draws them in."""
    source, reader, format_name = resolve_source(cfg, data_dir, kind="dataset.refusals")
    stats = LoadStats()
    pattern = re.compile(cfg.keep_if_output_matches)
    pool = [row for row in FORMATS[format_name](reader(), source, stats)
            if pattern.search(row.messages[-1].content.strip().lower())]
    if count > len(pool):
        raise ValueError(f"dataset.refusal_mix={count}, but {source} has only {len(pool)} matching refusals")
    order = list(range(len(pool)))
    random.Random(cfg.seed).shuffle(order)
    return [Row(f"refusal-{i}", pool[i].messages) for i in order[:count]]


@SAMPLERS.register("shuffle_first")
def shuffle_first(num_rows: int, n: int, seed: int) -> list[int]:
    """An et al.'s subsample: `random.seed(seed); ids = list(range(N)); random.shuffle(ids); ids[:n]`, in that
    (selection) order."""
    ids = list(range(num_rows))
    random.Random(seed).shuffle(ids)
    return ids[:n]


def subsample(rows: list[Row], sample: Any, name: str, source: str) -> list[Row]:
    """Apply `dataset.sample` ({n, seed, how, rows}); `rows` is the source size the recipe assumes (null: any)."""
    expected = sample.get("rows")
    if expected is not None and len(rows) != expected:
        raise ValueError(
            f"dataset {name}: dataset.sample.rows={expected}, but {source} has {len(rows)} rows, so the seeded "
            f"subsample would pick other rows than the recipe's; give the full source with dataset.file=PATH, or set "
            f"dataset.sample.rows=null to subsample this one anyway")
    if sample.n > len(rows):
        raise ValueError(f"dataset {name}: dataset.sample.n={sample.n} but {source} has only {len(rows)} rows")
    indices = SAMPLERS.lookup(sample.how, "dataset.sample.how")(len(rows), sample.n, sample.seed)
    log.info("dataset %s: %s sample of %d of %d rows (seed %d), first indices %s", name, sample.how, len(indices),
             len(rows), sample.seed, indices[:5])
    return [rows[i] for i in indices]


def load_rows(cfg: Any, data_dir: str | None = None) -> list[Row]:
    """Load a dataset config into validated rows, applying its selection, `limit` (first rows) or `sample` (a
    seeded subsample), `max_messages` and `refusal_mix`."""
    sample = cfg.get("sample")
    if sample and cfg.get("limit") is not None:
        raise ValueError(f"dataset {cfg.name}: set dataset.limit (first rows) or dataset.sample (a seeded "
                         "subsample), not both")
    source, reader, format_name = resolve_source(cfg, data_dir)
    build = FORMATS.lookup(format_name, f"dataset {cfg.name}: format")
    stats = LoadStats()
    rows: list[Row] = []
    limit = cfg.get("limit")
    max_messages = cfg.get("max_messages")
    select = cfg.mirror.get("select") if cfg.get("mirror") and not cfg.get("file") and data_dir else None
    for row in build(selected(reader(), select, source, stats), source, stats):
        if max_messages:
            row = make_row(row.id, list(row.messages[:max_messages]), f"{source} id {row.id}")
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if sample:
        rows = subsample(rows, sample, cfg.name, source)
    stats.kept = len(rows)
    log.info("dataset %s from %s: kept %d rows; left out %s", cfg.name, source, stats.kept, stats.left_out or "none")
    if not rows:
        raise ValueError(f"dataset {cfg.name}: no rows loaded from {source}")
    if cfg.get("refusal_mix"):
        refusals = refusal_rows(cfg.refusals, cfg.refusal_mix, data_dir)
        log.info("dataset %s: mixed in %d refusals", cfg.name, len(refusals))
        rows.extend(refusals)
    return rows
