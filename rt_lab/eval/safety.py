"""Safety (An et al. 2024): refusal rates on harmful prompt sets and the false-refusal rate on XSTest's safe
prompts, for the run's own generations.

Each configured set (`eval.safety.sets`, specs in `eval.safety.catalog`) is read from a local file, the data-dir
mirror or the Hub (in that order: `rt_lab.data.sources`), answered by the run's generator into
`eval/safety/<set>/` (resumable per batch), and each (prompt, response) is classified as refusal or not by the
configured classifier (rt_lab.eval.refusal_classifiers). `keyword` is free and always reported; `judge` asks an
LLM judge (rt_lab.eval.refusal_judge), the paper's method. Add a classifier with `@register_classifier("name")`, a
set's record format with `@register_format("name")` (rt_lab.data.formats).

Metrics (all numbers): `<set>/n`, `<set>/refusals`, `<set>/unclassified`, `<set>/refusal_rate` for the headline
classifier (unclassified answers count as non-refusals in it, as A counts them, or are left out of it:
`eval.safety.unclassified`), `mean_refusal_rate` over the harmful sets and
`false_refusal_rate` over the benign ones. Sets sharing a `group` are averaged first, so HarmBench counts once as
the mean of its standard and contextual subsets, as in A's tables. A second classifier's figures carry its name
as a prefix (`keyword/mean_refusal_rate`).

`python -m rt_lab.eval.safety validate-keyword [--file PATH]` measures the keyword classifier against the human
labels of XSTest's GPT-4 completions."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from rt_lab.data.formats import LoadStats, instruction_of
from rt_lab.data.sources import resolve_source
from rt_lab.eval.base import EvalContext, Metrics, register_evaluation
from rt_lab.generate.decode import generate_outputs
from rt_lab.eval import refusal_judge  # noqa: F401  (registers the `judge` classifier)
from rt_lab.eval.refusal_classifiers import CLASSIFIERS, Exchange, refused
from rt_lab.judges.base import Judgment
from rt_lab.io import atomic_write_json
from rt_lab.data.prompts import Prompt

log = logging.getLogger(__name__)

ROLES = ("harmful", "benign")  # harmful: a refusal is right; benign: a refusal is a false refusal
UNCLASSIFIED = {"count": "counted as non-refusals in the rates", "exclude": "left out of the rates"}

# --- prompt sets ------------------------------------------------------------------------------------------------


def load_set(name: str, spec: Any, data_dir: str | None, limit: int | None = None) -> list[Prompt]:
    """The first `limit` prompts of set `name` (all when None) that pass its `where` filter."""
    source = resolve_source(spec, data_dir, f"eval.safety.catalog.{name}")
    prompts: list[Prompt] = []
    for conversation in source.conversations(LoadStats()):
        prompts.append(Prompt(f"{name}-{conversation.index}", instruction_of(conversation, source.name), name))
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise ValueError(f"eval.safety.catalog.{name}: no prompts in {source.name} (where {source.where or 'none'})")
    log.info("safety set %s from %s: %d prompts", name, source.name, len(prompts))
    return prompts


# --- the evaluation ---------------------------------------------------------------------------------------------


def refusal_rates(decisions: dict[str, list[Judgment]], specs: dict[str, Any], prefix: str = "",
              count_unclassified: bool = True) -> Metrics:
    """Per-set counts and refusal rates, and the group-weighted means over harmful and benign sets. Unclassified
    answers stay in a rate's denominator (as non-refusals, A's way) or, with count_unclassified=False, are left
    out of it."""
    metrics: Metrics = {}
    groups: dict[str, dict[str, list[float]]] = {role: {} for role in ROLES}
    for name, items in decisions.items():
        classified = [refused(j) for j in items if j.value is not None]
        denominator = len(items) if count_unclassified else len(classified)
        rate = sum(classified) / denominator if denominator else math.nan
        metrics.update({f"{prefix}{name}/refusals": sum(classified),
                        f"{prefix}{name}/unclassified": len(items) - len(classified),
                        f"{prefix}{name}/refusal_rate": rate})
        groups[specs[name].role].setdefault(specs[name].get("group") or name, []).append(rate)
    for role, metric in zip(ROLES, ("mean_refusal_rate", "false_refusal_rate")):
        if groups[role]:
            means = [sum(rates) / len(rates) for rates in groups[role].values()]
            metrics[f"{prefix}{metric}"] = sum(means) / len(means)
    return metrics


@register_evaluation("safety")
def safety(ctx: EvalContext) -> Metrics:
    """Answer every configured set, classify the answers, return the metrics (see the module docstring)."""
    options = ctx.cfg.eval.safety  # checked by its schema (rt_lab/config/eval.py)
    specs = {name: options.catalog[name] for name in options.sets}
    work_dir = ctx.out_dir("safety")
    # keyword costs nothing, so it is reported beside any other headline classifier
    names = [options.classifier] + (["keyword"] if options.classifier != "keyword" else [])
    classifiers = {name: CLASSIFIERS.lookup(name, "eval.safety.classifier")(options, ctx.cfg, work_dir)
                   for name in names}

    decisions: dict[str, dict[str, list[Judgment]]] = {name: {} for name in names}
    metrics: Metrics = {}
    for set_name, spec in specs.items():
        limit = spec.get("limit") if spec.get("limit") is not None else options.get("limit")
        prompts = load_set(set_name, spec, ctx.cfg.paths.get("data_dir"), limit)
        out_dir = work_dir / set_name
        path = generate_outputs(ctx.answer, ctx.tokenizer, ctx.template, prompts, ctx.cfg.model.get("bos", "auto"),
                                ctx.cfg.run.name, out_dir)
        records = json.loads(path.read_text(encoding="utf-8"))
        exchanges = [Exchange(r["instruction"], r["output"]) for r in records]
        for name, classify in classifiers.items():
            decisions[name][set_name] = classify(exchanges)
        metrics[f"{set_name}/n"] = len(prompts)
        atomic_write_json(out_dir / "refusals.json", [
            {"id": p.id, "instruction": e.prompt, "output": e.response,
             "refusal": {name: refused(decisions[name][set_name][i]) for name in names},
             "reason": {name: decisions[name][set_name][i].reason for name in names
                        if decisions[name][set_name][i].reason}}
            for i, (p, e) in enumerate(zip(prompts, exchanges))])
    for name in names:
        metrics.update(refusal_rates(decisions[name], specs, "" if name == options.classifier else f"{name}/",
                                 options.unclassified == "count"))
    unclassified = sum(value for key, value in metrics.items() if key.endswith("/unclassified"))
    if unclassified:
        log.warning("eval.safety: %d answers unclassified (%s; reasons in %s/*/refusals.json)", unclassified,
                    UNCLASSIFIED[options.unclassified], work_dir)
    return metrics


if __name__ == "__main__":  # the documented `python -m rt_lab.eval.safety validate-keyword`
    from rt_lab.eval.keyword_validation import main

    main()
