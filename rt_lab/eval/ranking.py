"""Response ranking (Hewitt et al. 2024, §4.2): does the model score an instruction's own response above
responses written for other instructions?

The first `limit` Alpaca-style rows form the pool. For each row in order, `rivals` response indices are drawn
uniformly from the whole pool, with replacement, by one `random.Random(seed)` stream: the authors' draws
(`random.seed(0)`, then `random.randint(0, n - 1)` five times per row, in their open_instruct/ratio_eval.py).
A draw of the row's own index is dropped, as their analysis (plot_ratios.py) drops it, so every pair compares
two different rows; `n_self_draws` counts them, and `n_pairs` is `rivals x rows` minus those.

A candidate is the row's instruction with a response, rendered by the run's template and labelled exactly as
training labels an IT row (the response tokens and its EOS supervised), truncated at `max_length` tokens. Its
score is exp(-mean NLL) of the supervised tokens. `accuracy` is the fraction of pairs in which the true
response scores strictly higher; a tie (the same response text at another index of the pool) is a loss, as
in the authors' `x > 0`, and `n_ties` counts them."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from rt_lab.config.source import RankingPoolConfig
from rt_lab.data.collate import collate_padded
from rt_lab.data.formats import LoadStats
from rt_lab.data.sources import resolve_source
from rt_lab.eval.base import EvalContext, Metrics, register_evaluation
from rt_lab.io import atomic_write_text, read_append_log
from rt_lab.data.masking import Example, encode_row
from rt_lab.data.rows import Row, RowError
from rt_lab.data.templates import Template
from rt_lab.train.loss import example_loss_sums, supervised_targets
from rt_lab.train.token_losses import fused_head

log = logging.getLogger(__name__)


def load_pool(cfg: RankingPoolConfig, data_dir: str | None) -> list[Row]:
    """The first `cfg.limit` rows of the configured source; each must be one user turn and its response."""
    source = resolve_source(cfg, data_dir, "eval.ranking")
    rows: list[Row] = []
    for row in source.rows(LoadStats()):
        roles = [message.role for message in row.messages]
        if roles != ["user", "assistant"]:
            raise RowError(f"{source.name} id {row.id}: ranking needs one user and one assistant message, got {roles}")
        rows.append(row)
        if len(rows) == cfg.limit:
            break
    if len(rows) < 2:
        raise ValueError(f"eval.ranking: {source.name} has {len(rows)} row(s); ranking needs at least 2")
    if cfg.limit is not None and len(rows) < cfg.limit:
        log.warning("eval.ranking: %s has only %d rows (limit %d); ranking all of them", source.name, len(rows),
                    cfg.limit)
    return rows


def draw_rivals(pool_size: int, rivals: int, seed: int) -> list[list[int]]:
    """Rival response indices for each row, self-draws included (the caller drops them), in the authors' order."""
    rng = random.Random(seed)
    return [[rng.randint(0, pool_size - 1) for _ in range(rivals)] for _ in range(pool_size)]


def sequence_key(example: Example) -> str:
    """What a cached NLL belongs to: the exact tokens and labels (a cache lives in one run's dir: one model)."""
    return hashlib.sha1(json.dumps([example.input_ids, example.labels]).encode()).hexdigest()


@torch.inference_mode()
def mean_nlls(model: Any, examples: Sequence[Example], batch_size: int, cache: Path | None = None,
              fused: bool = True) -> list[float]:
    """Mean NLL of each example's supervised tokens, in batches of similar length. Identical sequences are scored
    once, so a response duplicated in the pool ties exactly instead of by batch-dependent rounding. With `cache`,
    every finished batch is appended there and a rerun computes only the sequences it does not hold yet. `fused`:
    the LM head and cross-entropy in chunks where the model allows (rt_lab/train/token_losses.py), as training's
    `trainer.fused_loss` says."""
    done = {record["key"]: record["nll"] for record in read_append_log(cache)} if cache else {}
    keys = [sequence_key(example) for example in examples]
    todo = sorted({key: i for i, key in enumerate(keys) if key not in done}.values(),
                  key=lambda i: -len(examples[i].input_ids))  # longest first: running out of memory shows early
    if done:
        log.info("eval.ranking: %d of %d sequences already scored in %s", len(examples) - len(todo), len(examples),
                 cache)
    device = next(model.parameters()).device
    head = fused_head(model) if fused else None
    sink = cache.open("a", encoding="utf-8") if cache else None
    try:
        for start in tqdm(range(0, len(todo), batch_size), desc="ranking", unit="batch"):
            indices = todo[start:start + batch_size]
            # right padding: causal attention keeps the pad tokens (any id) out of every real position
            batch = {key: value.to(device) for key, value in
                     collate_padded([examples[i] for i in indices], pad_id=0).items()}
            where = supervised_targets(batch)  # every example has a supervised token (rank() drops the others)
            nlls = example_loss_sums(model, batch, where, head) / where.counts
            for index, nll in zip(indices, nlls.tolist(), strict=True):
                done[keys[index]] = nll
            if sink:
                sink.writelines(json.dumps({"key": keys[i], "nll": done[keys[i]]}) + "\n" for i in indices)
                sink.flush()
    finally:
        if sink:
            sink.close()
    return [done[key] for key in keys]


def rank(rows: Sequence[Row], model: Any, tokenizer: Any, template: Template, rivals: int, seed: int,
         max_length: int, batch_size: int, bos: str = "auto", cache: Path | None = None,
         fused: bool = True) -> tuple[Metrics, list[dict]]:
    """Score every row's own response against its drawn rivals; returns (metrics, one record per scored row)."""
    draws = draw_rivals(len(rows), rivals, seed)
    candidates: list[tuple[int, int]] = []  # (instruction row, response row)
    examples: list[Example] = []
    for i, row in enumerate(rows):
        for j in dict.fromkeys([i, *draws[i]]):
            candidate = Row(f"{row.id}<-{rows[j].id}", (row.messages[0], rows[j].messages[1]))
            example = encode_row(candidate, template, tokenizer, "assistant", max_length, bos)
            if example is not None:  # None: the instruction alone fills max_length, no response token is left
                candidates.append((i, j))
                examples.append(example)
    nll_of = dict(zip(candidates, mean_nlls(model, examples, batch_size, cache, fused)))

    wins = ties = self_draws = skipped = 0
    true_scores: list[float] = []
    rival_scores: list[float] = []
    records = []
    for i, row in enumerate(rows):
        self_draws += draws[i].count(i)
        if (i, i) not in nll_of:
            skipped += 1
            continue
        true = nll_of[i, i]
        compared = [(j, nll_of[i, j]) for j in draws[i] if j != i and (i, j) in nll_of]
        # lower mean NLL is the higher score; comparing NLLs avoids exp() underflow turning both into 0
        wins += sum(true < nll for _, nll in compared)
        ties += sum(true == nll for _, nll in compared)
        true_scores.append(math.exp(-true))
        rival_scores.extend(math.exp(-nll) for _, nll in compared)
        records.append({"id": row.id, "score": math.exp(-true),
                        "rivals": [{"id": rows[j].id, "score": math.exp(-nll)} for j, nll in compared]})
    if skipped:
        log.warning("eval.ranking: %d of %d instructions fill max_length=%d on their own; left out", skipped,
                    len(rows), max_length)
    n_pairs = len(rival_scores)
    if not n_pairs:
        raise ValueError(f"eval.ranking: no (true, rival) pair to compare among {len(rows)} rows")
    metrics: Metrics = {
        "accuracy": wins / n_pairs,
        "n_pairs": n_pairs,
        "n_rows": len(true_scores),
        "n_ties": ties,
        "n_self_draws": self_draws,
        "n_rows_skipped": skipped,
        "mean_true_score": sum(true_scores) / len(true_scores),
        "mean_rival_score": sum(rival_scores) / n_pairs,
    }
    return metrics, records


@register_evaluation("ranking")
def ranking(ctx: EvalContext) -> Metrics:
    """`eval=ranking`: response ranking on `eval.ranking`'s rows; per-row scores go to eval/ranking/scores.jsonl.
    The NLLs take the LM-head path training takes (`trainer.fused_loss`)."""
    options = ctx.cfg.eval.ranking
    rows = load_pool(options, ctx.cfg.paths.data_dir)
    out_dir = ctx.out_dir("ranking")
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics, records = rank(rows, ctx.model(), ctx.tokenizer, ctx.template, options.rivals, options.seed,
                            options.max_length, options.batch_size, ctx.cfg.model.bos, out_dir / "nlls.jsonl",
                            ctx.cfg.trainer.fused_loss)
    atomic_write_text(out_dir / "scores.jsonl",
                      "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    return metrics
