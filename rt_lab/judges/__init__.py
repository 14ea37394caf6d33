"""Pairwise judges for AlpacaEval-style win rates, with a resumable on-disk judgment cache.

A judge (rt_lab.judges.base.Judge) answers a question with one of two labels and gives the probability of the
second (`choose`), or reasons and answers in text (`generate`); the pairwise comparison (`compare`: is the second
of two outputs better?) puts the pair as its protocol says (rt_lab.judges.protocols: AlpacaEval's annotator or
rt_lab's prompt). `judge_pairs` compares each model output with its reference (AlpacaEval's output_1 =
reference, output_2 = model), in both orders or in the protocol's one order, and returns preferences p = 1 +
P(model wins) for `rt_lab.compare.winrate.summarize`. `judge_each` (rt_lab.judges.cache) runs any many-item judging (the
safety evaluation's refusal classifier too) through the same cache, concurrency limit and failure handling. A
judge is a `Judge` subclass taking its config keys as keyword arguments; a `judge/` option names it with
`_target_` and `build_judge(cfg)` builds it. The built-in ones are in rt_lab.judges.backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rt_lab.config.judge import JudgeConfig
from rt_lab.judges.backends import HFLocalJudge, OpenAIJudge, parse_reply
from rt_lab.judges.base import DRAW, Judge, JudgeError, Judgment, Reply, SpendCapExceeded
from rt_lab.judges.cache import cache_key, judge_each

__all__ = ["DRAW", "HFLocalJudge", "Judge", "JudgeError", "Judgment", "OpenAIJudge", "Reply", "SpendCapExceeded",
           "build_judge", "cache_key", "judge_each", "judge_pairs", "parse_reply"]


def build_judge(cfg: JudgeConfig) -> Judge:
    """The judge whose class a `judge/` config names (`_target_`), built from its other keys; `name` names the
    judge in the caches of what it judged or wrote, and is not the class's."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(cfg, resolve=True)
    options.pop("name", None)
    return instantiate(options)


def _judge_pair(judge: Judge, instruction: str, reference: str, output: str) -> Judgment:
    """The AlpacaEval preference 1 + P(model wins) of one pair. Both orders (when asked) are averaged in
    P(model wins), which cancels the judge's first-position bias to first order; otherwise the protocol picks
    the one order shown."""
    orders = [False, True] if judge.both_orders else [judge.protocol.model_first(instruction)]
    p_model = []
    for model_first in orders:
        first, second = (output, reference) if model_first else (reference, output)
        p_second = judge.compare(instruction, first, second)
        if p_second.value is None:
            return Judgment(None, f"{'model' if model_first else 'reference'} first: {p_second.reason}",
                            p_second.final)
        p_model.append(1 - p_second.value if model_first else p_second.value)
    return Judgment(1 + sum(p_model) / len(p_model))


def judge_pairs(judge: Judge, instructions: Sequence[str], outputs: Sequence[str], references: Sequence[str],
                cache_path: str | Path, also_cached: Sequence[str | Path] = ()) -> list[Judgment]:
    """One Judgment per row, in row order: the preference of model output i against reference i (AlpacaEval's
    output_1 = reference, output_2 = model; None = unparsable, with the reason). Identical outputs are draws
    without a call; everything else goes through `judge_each` and its cache."""
    if not len(instructions) == len(outputs) == len(references):
        raise ValueError(f"judge_pairs: {len(instructions)} instructions, {len(outputs)} outputs and "
                         f"{len(references)} references; expected one of each per row")
    asked = [index for index, (output, reference) in enumerate(zip(outputs, references)) if output != reference]
    identity = judge.identity()
    keys = [cache_key(identity, instructions[i], references[i], outputs[i]) for i in asked]
    judged = judge_each(judge, keys, lambda n: _judge_pair(judge, instructions[asked[n]], references[asked[n]],
                                                           outputs[asked[n]]), cache_path, "pairs", also_cached)
    results = [Judgment(DRAW)] * len(outputs)
    for index, judgment in zip(asked, judged):
        results[index] = judgment
    return results
