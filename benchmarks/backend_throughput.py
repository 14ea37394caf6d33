"""Generation backends against each other: rt_lab's own decoding loop (`generation.backend=hf`) and vLLM
(`generation.backend=vllm`, with and without `generation.vllm.enforce_eager`), each built as a run builds it
(rt_lab.generate.parity), on the same AlpacaEval prompts with the rule head, greedy. Prints each one's start-up
(model load; vLLM's engine start), generated tokens/s, and how many answers equal the hf backend's.

vLLM needs its own environment; on a CPU, the venv `make test-vllm` builds:

    .venv-vllm/bin/python benchmarks/backend_throughput.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("RT_LAB_ROOT", str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB, on a CPU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rules", default="[eos_ramp,uniform,diversity]", help="rules.enabled")
    parser.add_argument("--skip-compiled", action="store_true",
                        help="leave out vLLM with torch.compile (its CPU start-up takes minutes)")
    args = parser.parse_args()

    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import rt_lab  # noqa: F401  (registers the config resolvers)
    from generation_throughput import count_generated
    from rt_lab.data.prompts import load_prompts
    from rt_lab.generate.parity import BackendTiming, answers_by_backend
    from rt_lab.models import load_tokenizer, resolve_path

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            f"model={args.model}", "method=rules", f"rules.enabled={args.rules}", "prompts=alpaca_eval",
            f"prompts.limit={args.prompts}", f"paths.data_dir={args.data_dir}",
            f"generation.max_new_tokens={args.max_new_tokens}", f"generation.batch_size={args.batch_size}"])
    instructions = [prompt.instruction for prompt in load_prompts(cfg.prompts, args.data_dir)]
    tokenizer = load_tokenizer(cfg.model, resolve_path(cfg.model, cfg.paths.cache_dir))
    variants = {"hf (rt_lab's loop)": ("hf", {}),
                "vllm, enforce_eager": ("vllm", {"enforce_eager": True})}
    if not args.skip_compiled:
        variants["vllm, torch.compile"] = ("vllm", {"enforce_eager": False})
    print(f"model={args.model} dtype={cfg.model.dtype} prompts={len(instructions)} (AlpacaEval) "
          f"max_new_tokens={args.max_new_tokens} batch_size={args.batch_size} rules={list(cfg.rules.enabled)} "
          f"torch threads={torch.get_num_threads()}", flush=True)
    answers: dict[str, list[str]] = {}
    timings: dict[str, BackendTiming] = {}
    for label, (backend, vllm_args) in variants.items():
        variant_cfg = OmegaConf.merge(cfg, {"generation": {"vllm": vllm_args}})
        timing: dict[str, BackendTiming] = {}
        answers[label] = answers_by_backend(variant_cfg, instructions, (backend,), timing)[backend]
        timings[label] = timing[backend]
        print(f"  done: {label}", flush=True)

    reference = answers["hf (rt_lab's loop)"]
    print("\n| backend | start-up s | generating s | tokens | tokens/s | answers equal to hf |\n|---|---|---|---|---|---|")
    for label, texts in answers.items():
        tokens = count_generated(tokenizer, texts)
        timing = timings[label]
        same = sum(a == b for a, b in zip(texts, reference))
        print(f"| {label} | {timing.start_s:.1f} | {timing.answer_s:.1f} | {tokens} | {tokens / timing.answer_s:.1f} "
              f"| {same}/{len(texts)} |")


if __name__ == "__main__":
    main()
