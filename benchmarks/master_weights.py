#!/usr/bin/env python
"""What a full fine-tune of a bf16-loaded model does with small updates, through `launch.py` itself.

Three runs of the same 2 steps (SmolLM2-135M by default, `adapter=full model.dtype=bfloat16`, lr 1e-5, constant
schedule) from the same bf16 weights, on the CPU:

* `32-true`: the reference; fp32 master weights (rt_lab upcasts the trainable weights) and fp32 compute.
* `bf16-mixed`: the GPU presets' precision; fp32 master weights, bf16 autocast.
* `bf16-true` (`trainer.allow_low_precision_weights=true`): the weights themselves in bf16.

For each it prints the share of weights bit-identical to the start after the 2 steps, the share of the elements
that moved in the reference that also moved here, the first two losses against the reference's, and the bytes
per parameter that training state takes (weights + gradients, same dtype, + AdamW's two moments), read from the
checkpoint each run writes.

    HF_HUB_OFFLINE=1 python benchmarks/master_weights.py [--model smollm2_135m] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = {
    "32-true": ["trainer.lightning.precision=32-true"],
    "bf16-mixed": ["trainer.lightning.precision=bf16-mixed"],
    "bf16-true": ["trainer.lightning.precision=bf16-true", "trainer.allow_low_precision_weights=true"],
}


def launch(model: str, out: Path, extra: list[str]) -> Path:
    run_dir = out / extra[0].split("=")[1]
    command = [sys.executable, str(ROOT / "launch.py"), f"model={model}", "adapter=full", "model.dtype=bfloat16",
               "method=rt", "dataset=sample", "logger=csv", "trainer=cpu", "trainer.lightning.max_steps=2",
               "trainer.optimizer.lr=1e-5", "trainer.schedule.name=constant", "trainer.schedule.warmup_ratio=0",
               "trainer.checkpoint_every_n_steps=1", "data.shuffle=false", "prompts.limit=1",
               "generation.max_new_tokens=1", f"hydra.run.dir={run_dir}", *extra]
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})
    return run_dir


def losses(metrics: Path) -> list[float]:
    with metrics.open(newline="") as handle:
        return [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="master_weights."))
    sys.path.insert(0, str(ROOT))
    from hydra import compose, initialize_config_dir
    from transformers import AutoModelForCausalLM

    from rt_lab.layout import RunDir
    from rt_lab.models import resolve_path

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={args.model}"])
    base = AutoModelForCausalLM.from_pretrained(resolve_path(cfg.model, None), dtype=torch.bfloat16)
    start = {name: p.detach().float() for name, p in base.named_parameters()}
    del base

    results = {}
    for name, extra in PRECISIONS.items():
        run = RunDir(launch(args.model, out, extra))
        checkpoint = torch.load(run.checkpoint, map_location="cpu", weights_only=False)
        weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
        moments = [t for state in checkpoint["optimizer_states"][0]["state"].values() for t in state.values()
                   if torch.is_tensor(t) and t.dim() > 0]
        parameters = sum(start[n].numel() for n in start)
        weight_bytes = sum(weights[n].numel() * weights[n].element_size() for n in start)
        state_bytes = 2 * weight_bytes + sum(t.numel() * t.element_size() for t in moments)
        results[name] = (weights, losses(run.csv_metrics), state_bytes / parameters)

    reference = results["32-true"][0]
    moved_ref = {n: reference[n].float() != start[n] for n in start}
    total = sum(t.numel() for t in start.values())
    print(f"\n{args.model}, full fine-tune from bf16 weights, lr 1e-5, 2 steps (run dirs under {out})")
    print("| precision | weights bit-identical to the start | of the reference's moved elements, moved | "
          "loss step 1 / 2 (reference) | training state, bytes/param |")
    print("|---|---|---|---|---|")
    for name, (weights, curve, per_param) in results.items():
        same = sum(int((weights[n].float() == start[n]).sum()) for n in start)
        hit = sum(int((weights[n].float() != start[n])[moved_ref[n]].sum()) for n in start)
        print(f"| {name} | {100 * same / total:.2f}% | {100 * hit / sum(int(m.sum()) for m in moved_ref.values()):.2f}%"
              f" | {' / '.join(f'{x:.4f}' for x in curve[:2])} ({' / '.join(f'{x:.4f}' for x in results['32-true'][1][:2])})"
              f" | {per_param:.1f} |")


if __name__ == "__main__":
    main()
