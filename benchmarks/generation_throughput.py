"""Generation speed with and without the rule head, against the original decoding approach.

(a) original: one prompt at a time, no KV cache, the whole sequence recomputed every step, and the rule scores
    recomputed from the whole sequence every step;
(b) rt_lab with the rule head: longest prompts first, KV cache, continuous batching (a finished row leaves and
    the next prompt joins), incremental rule state;
(c) rt_lab without rules.
Prints generated tokens/s for each, (b)/(a) speed-up, and how many prompts (a) and (b) answer identically (same
rules, same greedy decoding). Rules change answers' lengths, so the head's own cost is measured separately: (b)
and (c) again with every row decoding exactly max_new_tokens. With `--repeats N` every variant runs N times, in
rounds of one run of each, and its fastest run counts.

    python benchmarks/generation_throughput.py --data-dir ../shared/data --batch-size 8 16 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("RT_LAB_ROOT", str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import rt_lab  # noqa: E402,F401
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from rt_lab.generate.decode import (EncodedPrompt, encode_prompt, generate_stream, generation_config,  # noqa: E402
                                   in_prompt_order)
from rt_lab.models import load_model, load_tokenizer, resolve_path  # noqa: E402
from rt_lab.data.prompts import load_prompts  # noqa: E402
from rt_lab.generate.rule_head import RuleHead  # noqa: E402
from rt_lab.generate.rules import build_rules  # noqa: E402
from rt_lab.generate.stopping import stop_token_ids, until_stop  # noqa: E402


def count_generated(tokenizer, texts):
    return sum(len(tokenizer(text, add_special_tokens=False).input_ids) + 1 for text in texts)  # + EOS/stop


@torch.inference_mode()
def original(model, tokenizer, prompts: list[EncodedPrompt], rules, max_new_tokens: int) -> list[str]:
    """Batch 1, no cache; a fresh rule head per step recomputes the token set from the whole sequence."""
    texts = []
    stops = stop_token_ids(tokenizer, model.generation_config)
    for prompt in prompts:
        ids = torch.tensor([prompt.ids])
        start = ids.shape[1]
        for _ in range(max_new_tokens):
            logits = model(input_ids=ids, use_cache=False).logits[:, -1]
            head = RuleHead(rules, torch.tensor([start]), torch.tensor([prompt.instruction_start]))
            token = head(ids, logits).argmax(-1, keepdim=True)
            ids = torch.cat([ids, token], dim=1)
            if token.item() in stops:
                break
        texts.append(tokenizer.decode(until_stop(ids[0, start:].tolist(), stops), skip_special_tokens=True))
    return texts


def batched(model, tokenizer, prompts: list[EncodedPrompt], rules, config, batch_size: int) -> list[str]:
    """As a run generates: longest prompt first, `batch_size` rows decoding, refilled as rows finish."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].ids))
    answers = generate_stream(model, tokenizer, [prompts[i] for i in order], config, rules, batch_size)
    return in_prompt_order(((order[rank], text) for rank, text in answers), len(prompts))


@dataclass
class Variant:
    label: str
    run: Callable[[], list[str]]
    texts: list[str] = field(default_factory=list)
    tokens: int = 0
    speeds: list[float] = field(default_factory=list)  # tokens/s of each run

    def time(self, tokenizer) -> None:
        started = time.perf_counter()
        self.texts = self.run()
        seconds = time.perf_counter() - started
        self.tokens = count_generated(tokenizer, self.texts)  # the same every run: greedy
        self.speeds.append(self.tokens / seconds)

    @property
    def best(self) -> float:
        """tokens/s of the fastest run: the one least disturbed by other work on a shared machine."""
        return max(self.speeds)

    def line(self) -> str:
        runs = f"  (runs: {', '.join(f'{speed:.1f}' for speed in self.speeds)})" if len(self.speeds) > 1 else ""
        seconds = self.tokens / self.best
        return f"  {self.label:<32} {self.tokens:>6} tokens  {seconds:8.1f} s  {self.best:8.1f} tok/s{runs}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[16],
                        help="one or more batch sizes; (a) runs once for all of them")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time every variant this many times, in rounds of one run of each (so a slow spell of "
                             "the machine falls on all of them), and keep each one's fastest run")
    args = parser.parse_args()

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={args.model}", "method=rules", "prompts=alpaca_eval",
                                           f"prompts.limit={args.prompts}",
                                           f"generation.max_new_tokens={args.max_new_tokens}"])
    path = resolve_path(cfg.model, None)
    tokenizer = load_tokenizer(cfg.model, path)
    model = load_model(cfg.model, path).eval()
    template = instantiate(cfg.template)
    prompts = [encode_prompt(p.instruction, template, tokenizer, cfg.model.bos)
               for p in load_prompts(cfg.prompts, args.data_dir)]
    rules = build_rules(cfg.rules, tokenizer)
    config = generation_config(cfg.generation, tokenizer)
    fixed = generation_config(OmegaConf.merge(cfg.generation, {"min_new_tokens": args.max_new_tokens}), tokenizer)
    print(f"model={args.model} prompts={len(prompts)} (AlpacaEval) max_new_tokens={args.max_new_tokens} "
          f"device=cpu threads={torch.get_num_threads()} rules={list(cfg.rules.enabled)} "
          f"fastest of {args.repeats} run(s) each", flush=True)

    def batched_run(generation_config, with_rules, batch_size):
        return lambda: batched(model, tokenizer, prompts, rules if with_rules else [], generation_config, batch_size)

    original_run = Variant("(a) original: batch 1, no cache",
                           lambda: original(model, tokenizer, prompts, rules, args.max_new_tokens))
    per_batch = {batch_size: {
        "b": Variant("(b) rt_lab with rules", batched_run(config, True, batch_size)),
        "c": Variant("(c) rt_lab without rules", batched_run(config, False, batch_size)),
        "fixed_b": Variant("(b) with rules, fixed length", batched_run(fixed, True, batch_size)),
        "fixed_c": Variant("(c) without rules, fixed length", batched_run(fixed, False, batch_size)),
    } for batch_size in args.batch_size}
    variants = [original_run, *(v for group in per_batch.values() for v in group.values())]
    for round_ in range(1, args.repeats + 1):
        for variant in variants:
            variant.time(tokenizer)
            print(f"  round {round_}/{args.repeats}: {variant.label} {variant.speeds[-1]:.1f} tok/s", flush=True)

    print(original_run.line())
    for batch_size, group in per_batch.items():
        print(f"batch {batch_size}:")
        for variant in group.values():
            print(variant.line())
        same = sum(a == b for a, b in zip(original_run.texts, group["b"].texts))
        print(f"  speed-up (b)/(a): {group['b'].best / original_run.best:.1f}x   identical answers (a) vs (b): "
              f"{same}/{len(prompts)}\n"
              f"  rule-head overhead at equal decoding steps (c)/(b): "
              f"{group['fixed_c'].best / group['fixed_b'].best:.3f}   (free-running tokens/s (c)/(b): "
              f"{group['c'].best / group['b'].best:.3f}, answers differ in length)")


if __name__ == "__main__":
    main()
