"""Training datasets: a source's rows (rt_lab.data.sources, rt_lab.data.formats) with the dataset config's
`limit` or seeded `sample`, `max_messages`, refusal mix and `refine` (rewritten responses) applied."""

from __future__ import annotations

import logging
import random
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rt_lab.config.dataset import DatasetConfig, RefusalsConfig
from rt_lab.data.formats import LoadStats
from rt_lab.data.refine import refine_rows
from rt_lab.data.rows import Row, make_row
from rt_lab.data.sources import resolve_source
from rt_lab.registry import Registry

log = logging.getLogger(__name__)

SAMPLERS = Registry("dataset sampler")  # dataset.sample.how: (rows in the source, n, seed) -> row indices


def refusal_rows(cfg: RefusalsConfig, count: int, data_dir: str | None) -> list[Row]:
    """An et al.'s refusal mix: the safety examples whose answer matches `keep_if_output_matches` (case-folded),
    in a `random.seed(seed)` shuffle, first `count` — the order their code draws them in."""
    source = resolve_source(cfg, data_dir, "dataset.refusals")
    pattern = re.compile(cfg.keep_if_output_matches)
    pool = [row for row in source.rows(LoadStats()) if pattern.search(row.messages[-1].content.strip().lower())]
    if count > len(pool):
        raise ValueError(f"dataset.refusal_mix={count}, but {source.name} has only {len(pool)} matching refusals")
    return [Row(f"refusal-{i}", pool[i].messages) for i in shuffle_first(len(pool), count, cfg.seed)]


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


def load_rows(cfg: DatasetConfig, data_dir: str | None = None) -> list[Row]:
    """Load a dataset config into validated rows, applying its `where` filter, `limit` (first rows) or `sample` (a
    seeded subsample), `max_messages`, `refusal_mix` and `refine` (every response of those rows rewritten)."""
    rows = unrefined_rows(cfg, data_dir)
    return refine_rows(rows, cfg.refine, cfg.name).rows if cfg.get("refine") else rows


def refined_dataset(cfg: DatasetConfig, data_dir: str | None = None) -> DictConfig:
    """A dataset config with `refine`, refined now: its refined set as a dataset of its own, the written file read
    as it is (no limit, sample, refusal mix or refinement applied again)."""
    from rt_lab.config.dataset import DatasetConfig

    refined = refine_rows(unrefined_rows(cfg, data_dir), cfg.refine, cfg.name)
    return OmegaConf.structured(DatasetConfig(name=cfg.name, single_task=cfg.single_task, file=str(refined.path),
                                              format="messages"))


def unrefined_rows(cfg: DatasetConfig, data_dir: str | None) -> list[Row]:
    """The rows of a dataset config before `refine`."""
    sample = cfg.get("sample")
    source = resolve_source(cfg, data_dir, "dataset")
    stats = LoadStats()
    rows: list[Row] = []
    limit = cfg.get("limit")
    max_messages = cfg.get("max_messages")
    for row in source.rows(stats):
        if max_messages:
            row = make_row(row.id, list(row.messages[:max_messages]), f"{source.name} id {row.id}")
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if sample:
        rows = subsample(rows, sample, cfg.name, source.name)
    log.info("dataset %s from %s: kept %d rows; left out %s", cfg.name, source.name, len(rows),
             stats.left_out or "none")
    if not rows:
        raise ValueError(f"dataset {cfg.name}: no rows loaded from {source.name}")
    if cfg.get("refusal_mix"):
        refusals = refusal_rows(cfg.refusals, cfg.refusal_mix, data_dir)
        log.info("dataset %s: mixed in %d refusals", cfg.name, len(refusals))
        rows.extend(refusals)
    return rows
