#!/usr/bin/env python
"""Training throughput and peak memory: rt_lab (unpacked or packed, fused or unfused loss, activations kept or
recomputed) against TRL's SFTTrainer with completion-only loss.

All train the same model on the same single-turn rows (`--data sample`: the shipped sample set, all under 256
tokens, repeated to `--rows`; `--data lima`: the first `--rows` single-turn LIMA conversations from
`--data-dir`, long real rows where the vocabulary logits dominate memory), with the same AdamW (lr 1e-4, wd 0,
constant schedule), grad-norm clip 1.0, max length and a full fine-tune. None recomputes activations (gradient
checkpointing) except `rt_lab (recomputed)`, which shows what that trades. Each configuration runs in its own
subprocess (this script re-invoked with `--worker`), so peak memory is that configuration's alone:

* CPU: peak RSS during training minus RSS just before training starts (the high-water mark is reset through
  /proc/self/clear_refs where Linux allows it, otherwise ru_maxrss is used as is).
* CUDA: torch.cuda.max_memory_allocated() during training (reset just before it starts; includes the weights).

Throughput counts supervised tokens only (tokens that carry loss: response tokens + EOS), per optimizer step, over
steps 2..N (step 1 is warm-up). `sup_tok/s` times on_train_batch_start -> on_train_batch_end (Lightning) and
on_step_begin -> on_step_end (transformers), so data collation before a step and logging after it are outside;
`wall_tok/s` is measured from the end of step 1 to the end of step N, so it includes both. With `--repeats N`
every configuration runs N times, in rounds of one run of each, and its fastest run counts.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/train_throughput.py --model tiny
    python benchmarks/train_throughput.py --model smollm2_135m --data lima --max-length 1024 --batch-size 4 \
        --micro-batch-size 4 --steps 12
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ("tiny", "smollm2_135m")
FRAMEWORKS = {  # worker name -> table label, in the order they run and are printed
    "trl": "trl (unpacked)",
    "rt_lab": "rt_lab (unpacked)",
    "rt_lab_packed": "rt_lab (packed)",
    "rt_lab_unfused": "rt_lab (unfused loss)",  # trainer.fused_loss=false: what the fused LM head + CE saves
    "rt_lab_packed_unfused": "rt_lab (packed, unfused)",  # packing as trainer=cpu runs it
    # trainer.gradient_checkpointing=true: each decoder layer's activations recomputed in the backward, for memory
    "rt_lab_checkpointed": "rt_lab (recomputed)",
}
TOLERANCE = 0.02  # supervised-token counts of the frameworks may differ by this fraction before we warn


# --------------------------------------------------------------------------------------------------- shared helpers


def compose(args: argparse.Namespace, rows_file: str | None = None, packing: bool = False,
            fused_loss: bool = True, checkpointing: bool = False) -> Any:
    """The real rt_lab config for this benchmark (IT method, full fine-tune, tag template, no logger)."""
    import rt_lab  # noqa: F401  (registers the OmegaConf resolvers the config uses)
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = [
        f"model={args.model}", f"dataset={args.data}", f"paths.data_dir={args.data_dir}", "method=it", "adapter=full",
        "logger=none", "template=tags",
        "trainer=cpu",  # optimizer/schedule/batch settings; the Lightning Trainer itself is built below
        "trainer.optimizer.lr=1e-4", "trainer.optimizer.weight_decay=0.0", "trainer.max_grad_norm=1.0",
        "trainer.schedule.name=constant", "trainer.schedule.warmup_ratio=0.0",
        f"data.batch_size={args.batch_size}", f"data.micro_batch_size={args.micro_batch_size}",
        f"trainer.gradient_checkpointing={str(checkpointing).lower()}", f"trainer.seed={args.seed}",
        f"data.max_length={args.max_length}", f"data.packing={str(packing).lower()}",
        f"trainer.fused_loss={str(fused_loss).lower()}",
    ]
    if args.pack_length:
        overrides.append(f"data.pack_length={args.pack_length}")
    if rows_file:
        overrides += [f"dataset.file={rows_file}", "dataset.format=messages", "dataset.name=bench"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class MemoryMeter:
    """Peak memory of the training part of a worker (see the module docstring)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.note = ""

    def start(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
            return
        self.before = rss_bytes()
        try:  # "5" resets the peak RSS (VmHWM, and with it ru_maxrss) to the current RSS
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.note = "peak RSS reset before training"
        except OSError as err:
            self.note = f"could not reset peak RSS ({err}); ru_maxrss includes setup"

    def stop(self) -> dict[str, float]:
        import resource

        import torch

        mib = 1024 * 1024
        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            return {"peak_mem_mib": peak / mib, "before_mib": self.before / mib, "memory_kind": "cuda_max_allocated"}
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return {"peak_mem_mib": (peak - self.before) / mib, "before_mib": self.before / mib,
                "peak_abs_mib": peak / mib, "memory_kind": "rss_delta", "memory_note": self.note}


class StepClock:
    """Per-optimizer-step start/end times and supervised-token counts."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.tokens: list[int] = []
        self.losses: list[float] = []
        self.cpu_starts: list[float] = []
        self.cpu_ends: list[float] = []

    def now(self) -> float:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def begin(self) -> None:
        self.starts.append(self.now())
        self.cpu_starts.append(time.process_time())

    def end(self) -> None:
        self.ends.append(self.now())
        self.cpu_ends.append(time.process_time())

    def summary(self) -> dict[str, Any]:
        steps = len(self.ends)
        if steps < 2:
            raise RuntimeError(f"only {steps} optimizer step(s) ran; need >= 2 (the first is warm-up)")
        durations = [end - start for start, end in zip(self.starts, self.ends)]
        timed_tokens = sum(self.tokens[1:])
        step_time = sum(durations[1:])
        wall_time = self.ends[-1] - self.ends[0]
        cpu_time = sum(end - start for start, end in zip(self.cpu_starts[1:], self.cpu_ends[1:]))
        return {
            "steps": steps, "step_seconds": durations, "step_tokens": self.tokens,
            "timed_tokens": timed_tokens, "timed_step_seconds": step_time, "timed_wall_seconds": wall_time,
            "tok_per_s": timed_tokens / step_time, "wall_tok_per_s": timed_tokens / wall_time,
            "timed_cpu_seconds": cpu_time, "tok_per_cpu_s": timed_tokens / cpu_time if cpu_time > 0 else float("nan"),
            "step_tok_per_s": [tokens / seconds for tokens, seconds in zip(self.tokens, durations)],
            "losses": self.losses,
        }


# ---------------------------------------------------------------------------------------------------------- workers


def worker_rt_lab(args: argparse.Namespace, packing: bool, fused_loss: bool, checkpointing: bool) -> dict[str, Any]:
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from rt_lab.data.masking import IGNORE
    from rt_lab.models import load_model, load_tokenizer, resolve_path
    from rt_lab.train.fit import build_datamodule, build_module, trainable

    cfg = compose(args, args.rows_file, packing=packing, fused_loss=fused_loss, checkpointing=checkpointing)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    path = resolve_path(cfg.model, cfg.paths.cache_dir)
    tokenizer = load_tokenizer(cfg.model, path)
    template = instantiate(cfg.template)
    model = trainable(load_model(cfg.model, path), cfg)  # as a run trains it (packing: sdpa_segments)
    data = build_datamodule(cfg, tokenizer, template)
    module = build_module(cfg, model, data)
    data.setup("fit")  # tokenise now (setup() is idempotent) so the count is known and stays out of the timing
    supervised = sum(example.num_supervised for example in data.examples)
    clock = StepClock(args.device)

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            clock.tokens.append(int(sum((micro["labels"][:, 1:] != IGNORE).sum() for micro in batch)))
            clock.begin()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            clock.end()
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if loss is not None:
                clock.losses.append(float(loss))

    shapes: list[list[list[int]]] = []

    class Shapes(L.Callback):  # micro-batch shapes per window, to show what packing did
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            shapes.append([list(micro["input_ids"].shape) for micro in batch])

    precision = "bf16-mixed" if args.precision == "bf16" else "32-true"
    with tempfile.TemporaryDirectory(prefix="rt_lab_bench_") as root:
        trainer = L.Trainer(
            accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, precision=precision,
            max_steps=args.steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0,
            limit_val_batches=0, callbacks=[Shapes(), Timer()], default_root_dir=root,
        )
        meter = MemoryMeter(args.device)
        meter.start()
        trainer.fit(module, datamodule=data)
        memory = meter.stop()
    return {
        "framework": args.worker, "rows": len(data.examples),
        "supervised_per_epoch": supervised, "supervised_count_note": "sum(Example.num_supervised)",
        "window_shapes": shapes, "torch_threads": torch.get_num_threads(), **clock.summary(), **memory,
    }


def worker_trl(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import trl
    from datasets import Dataset
    from hydra.utils import instantiate
    from transformers import TrainerCallback, set_seed

    from rt_lab.data.datasets import load_rows
    from rt_lab.models import load_model, load_tokenizer, resolve_path

    cfg = compose(args, args.rows_file)
    set_seed(args.seed)
    path = resolve_path(cfg.model, cfg.paths.cache_dir)
    tokenizer = load_tokenizer(cfg.model, path)
    template = instantiate(cfg.template)
    rows = load_rows(cfg.dataset)
    records = []
    for row in rows:
        user, assistant = row.messages
        response = assistant.content.strip() if template.strip_content else assistant.content
        records.append({"prompt": template.prompt(user.content, tokenizer),
                        "completion": response + tokenizer.eos_token})
    dataset = Dataset.from_list(records)
    model = load_model(cfg.model, path)
    clock = StepClock(args.device)

    class CountingSFTTrainer(trl.SFTTrainer):
        pending = 0

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            # Same count the loss normalises by: the causal-LM loss shifts labels by one.
            self.pending += int((inputs["labels"][:, 1:] != -100).sum())
            return super().training_step(model, inputs, num_items_in_batch)

    holder: dict[str, Any] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            holder["trainer"].pending = 0
            clock.begin()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.end()
            clock.tokens.append(holder["trainer"].pending)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:  # logging_steps=1: the mean loss of each optimizer step
                clock.losses.append(float(logs["loss"]))

    with tempfile.TemporaryDirectory(prefix="trl_bench_") as output_dir:
        config = trl.SFTConfig(
            output_dir=output_dir, max_length=args.max_length,
            per_device_train_batch_size=args.micro_batch_size,
            gradient_accumulation_steps=args.batch_size // args.micro_batch_size,
            learning_rate=1e-4, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
            optim="adamw_torch",  # torch.optim.AdamW as rt_lab's config uses (the transformers default is fused)
            lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, max_steps=args.steps,
            logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
            gradient_checkpointing=False, completion_only_loss=True, packing=False, padding_free=False,
            use_cpu=args.device == "cpu", bf16=args.precision == "bf16", fp16=False,
            dataloader_num_workers=0, dataloader_pin_memory=args.device == "cuda", seed=args.seed,
        )
        trainer = CountingSFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                                     callbacks=[Timer()])
        holder["trainer"] = trainer
        labels = trainer.train_dataset["labels"]
        supervised = sum(sum(label != -100 for label in row_labels[1:]) for row_labels in labels)
        meter = MemoryMeter(args.device)
        meter.start()
        trainer.train()
        memory = meter.stop()
    return {
        "framework": "trl", "rows": len(labels), "supervised_per_epoch": supervised,
        "supervised_count_note": "labels[1:] != -100 of the tokenized train_dataset",
        "torch_threads": torch.get_num_threads(), **clock.summary(), **memory,
    }


def run_worker(args: argparse.Namespace) -> None:
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    if args.worker == "trl":
        result = worker_trl(args)
    else:
        result = worker_rt_lab(args, packing=args.worker.startswith("rt_lab_packed"),
                               fused_loss=not args.worker.endswith("unfused"),
                               checkpointing=args.worker == "rt_lab_checkpointed")
    Path(args.result_file).write_text(json.dumps(result))


# ----------------------------------------------------------------------------------------------------------- parent


def prepare_rows(args: argparse.Namespace, folder: Path) -> tuple[Path, int]:
    """Write `--rows` single-turn rows of `--data` (the sample set's repeated), as a `messages` JSONL; returns
    (file, rows)."""
    from rt_lab.data.datasets import load_rows
    from rt_lab.models import resolve_path

    cfg = compose(args)
    resolve_path(cfg.model, cfg.paths.cache_dir)  # build or convert the model once, outside every worker
    rows = load_rows(cfg.dataset, cfg.paths.data_dir)
    single = [row for row in rows if len(row.messages) == 2
              and [m.role for m in row.messages] == ["user", "assistant"]]
    if not single:
        raise SystemExit(f"no single-turn rows in dataset {args.data}")
    if args.data != "sample" and len(single) < args.rows:
        raise SystemExit(f"dataset {args.data} has {len(single)} single-turn rows, fewer than --rows {args.rows}")
    chosen = [single[i % len(single)] for i in range(args.rows)]
    path = folder / f"rows-{args.model}.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for index, row in enumerate(chosen):
            messages = [{"role": m.role, "content": m.content} for m in row.messages]
            handle.write(json.dumps({"id": f"{row.id}-r{index}", "messages": messages}, ensure_ascii=False) + "\n")
    print(f"rows: {len(chosen)} of the {len(single)} single-turn rows of {len(rows)} {args.data} rows"
          + (", repeated" if len(chosen) > len(single) else ""))
    return path, len(chosen)


def cpu_busy(seconds: float = 0.5) -> float:
    """Fraction of all CPUs busy over a short interval while this script itself idles (Linux; 0 elsewhere)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return idle, sum(values[:8])

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def spawn(args: argparse.Namespace, worker: str, rows_file: Path, folder: Path) -> dict[str, Any]:
    result_file = folder / f"{args.model}-{worker}.json"
    log_file = folder / f"{args.model}-{worker}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--model", args.model,
               "--rows-file", str(rows_file), "--result-file", str(result_file), "--rows", str(args.rows),
               "--max-length", str(args.max_length), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--micro-batch-size", str(args.micro_batch_size),
               "--device", args.device, "--precision", args.precision, "--seed", str(args.seed),
               "--data", args.data, "--data-dir", args.data_dir]
    if args.pack_length:
        command += ["--pack-length", str(args.pack_length)]
    used = cpu_busy()
    if args.wait_idle and used > 0.2 and not args.device == "cuda":
        print(f"  waiting up to {args.wait_idle:.0f}s for the CPUs to go idle ({100 * used:.0f}% busy) ...", flush=True)
        deadline = time.monotonic() + args.wait_idle
        while used > 0.2 and time.monotonic() < deadline:
            used = cpu_busy(2.0)
    busy = f" (CPUs already {100 * used:.0f}% busy with other work)" if used > 0.2 else ""
    started = time.perf_counter()
    print(f"  running {FRAMEWORKS[worker]:<18}{busy} ...", end="", flush=True)
    if args.verbose:
        print()
        code = subprocess.call(command, cwd=ROOT)
    else:
        with log_file.open("w") as log:
            code = subprocess.call(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - started
    if code != 0 or not result_file.is_file():
        if not args.verbose:
            print(" FAILED")
            print("".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-60:]))
        raise SystemExit(f"worker {worker} for model {args.model} failed (exit code {code})")
    print(f" {elapsed:.0f}s")
    result = json.loads(result_file.read_text())
    result["cpu_busy_before"] = used
    return result


def fastest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the most supervised tokens/s (the one least disturbed by other work on a shared machine), with
    every run's speed and peak memory beside it."""
    best = dict(max(runs, key=lambda run: run["tok_per_s"]))
    best["runs"] = [{"tok_per_s": run["tok_per_s"], "peak_mem_mib": run["peak_mem_mib"]} for run in runs]
    return best


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    trl_result = results["trl"]
    print()
    print(f"model={args.model} data={args.data} rows={args.rows} max_length={args.max_length} device={args.device} "
          f"precision={args.precision} batch={args.batch_size} micro={args.micro_batch_size} steps={args.steps} "
          f"(timed: steps 2..{args.steps}) threads={trl_result['torch_threads']}")
    memory_label = ("peak RSS during training minus RSS before it" if args.device == "cpu"
                    else "torch.cuda.max_memory_allocated during training")
    print(f"{'framework':<26}{'sup_tok/s':>12}{'wall_tok/s':>12}{'peak_mem_MiB':>14}"
          f"{'ratio_vs_trl':>14}{'wall_ratio':>12}{'mem_ratio':>11}")
    for worker, label in FRAMEWORKS.items():
        result = results.get(worker)
        if result is None:
            continue
        ratio = result["tok_per_s"] / trl_result["tok_per_s"]
        wall_ratio = result["wall_tok_per_s"] / trl_result["wall_tok_per_s"]
        trl_memory = trl_result["peak_mem_mib"]
        mem_ratio = result["peak_mem_mib"] / trl_memory if trl_memory > 0 else float("nan")
        first = worker == "trl"
        print(f"{label:<26}{result['tok_per_s']:>12.1f}{result['wall_tok_per_s']:>12.1f}"
              f"{result['peak_mem_mib']:>14.1f}{'' if first else f'{ratio:.2f}x':>14}"
              f"{'' if first else f'{wall_ratio:.2f}x':>12}{'' if first else f'{mem_ratio:.2f}x':>11}")
    if len(trl_result["runs"]) > 1:
        print(f"fastest of {len(trl_result['runs'])} runs each; every run's sup_tok/s (peak_mem_MiB): " + "; ".join(
            f"{FRAMEWORKS[w]} " + ", ".join(f"{run['tok_per_s']:.1f} ({run['peak_mem_mib']:.0f})" for run in r["runs"])
            for w, r in results.items()))
    print(f"sup_tok/s = supervised tokens (response + EOS) per second of step time; wall_tok/s also counts the "
          f"time between steps (collation, logging); peak_mem_MiB = {memory_label}")
    print("supervised tokens counted per optimizer step from the micro-batches each step trained on")
    print("timed supervised tokens: " + ", ".join(f"{FRAMEWORKS[w]}={r['timed_tokens']}" for w, r in results.items()))
    counts = {worker: result["supervised_per_epoch"] for worker, result in results.items()}
    rows = {worker: result["rows"] for worker, result in results.items()}
    print("supervised tokens per epoch: " + ", ".join(f"{FRAMEWORKS[w]}={c}" for w, c in counts.items())
          + "   rows: " + ", ".join(f"{FRAMEWORKS[w]}={n}" for w, n in rows.items()))
    reference = counts["trl"]
    worst = max(abs(count - reference) / reference for count in counts.values())
    if worst > TOLERANCE:
        print(f"WARNING: supervised tokens per epoch differ by {100 * worst:.1f}% (> {100 * TOLERANCE:.0f}%) "
              "between the frameworks; the throughputs are not measured on the same work")
    else:
        print(f"supervised tokens per epoch agree within {100 * worst:.2f}%")
    print("step tok/s (step 1 = warm-up): " + "; ".join(
        f"{FRAMEWORKS[w]} " + " ".join(f"{rate:.0f}" for rate in r["step_tok_per_s"]) for w, r in results.items()))
    spreads = {w: max(r["step_tok_per_s"][1:]) / min(r["step_tok_per_s"][1:]) for w, r in results.items()}
    if max(spreads.values()) > 4:  # rows differ per step, so some spread is normal; contention gives 10x+
        print(f"WARNING: step throughput varies up to {max(spreads.values()):.1f}x within a run; the machine was "
              "probably busy with something else, so rerun before trusting the ratios")
    busy = {w: r["cpu_busy_before"] for w, r in results.items() if r.get("cpu_busy_before", 0) > 0.2}
    if busy:
        print("WARNING: other work was using the CPUs when these started: " + ", ".join(
            f"{FRAMEWORKS[w]} {100 * b:.0f}%" for w, b in busy.items()) + "; the timings are not clean")
    if all(r["losses"] for r in results.values()):
        print("step-1 loss (same rows, same initial weights): " + ", ".join(
            f"{FRAMEWORKS[w]}={r['losses'][0]:.5f}" for w, r in results.items()))
    packed = results.get("rt_lab_packed")
    if packed and packed.get("window_shapes"):
        micro_counts = [len(window) for window in packed["window_shapes"]]
        widths = sorted({shape[1] for window in packed["window_shapes"] for shape in window})
        print(f"rt_lab packed: micro-batches (bins) per step {micro_counts}, bin widths {widths[0]}..{widths[-1]} "
              f"(pack_length={args.pack_length or args.micro_batch_size * args.max_length})")
    if args.device == "cpu":
        for worker, result in results.items():
            if result.get("memory_note", "").startswith("could not"):
                print(f"note ({FRAMEWORKS[worker]}): {result['memory_note']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, action="append",
                        help="model config to benchmark; repeat for several (default: tiny, then smollm2_135m)")
    parser.add_argument("--data", choices=("sample", "lima"), default="sample",
                        help="sample: the shipped rows, repeated; lima: LIMA's first single-turn rows (default sample)")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"),
                        help="folder holding hewitt/lima/lima_data.jsonl for --data lima (default ../shared/data)")
    parser.add_argument("--rows", type=int, default=64, help="training rows (default 64)")
    parser.add_argument("--max-length", type=int, default=256, help="max tokens per row (default 256)")
    parser.add_argument("--steps", type=int, default=6,
                        help="optimizer steps; the first is warm-up, not timed (default 6)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per optimizer step (default 8)")
    parser.add_argument("--micro-batch-size", type=int, default=4,
                        help="rows per forward/backward when not packed (default 4)")
    parser.add_argument("--pack-length", type=int, default=None,
                        help="rt_lab data.pack_length for the packed run (default: rt_lab's, micro-batch x max length)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="(default cpu)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="fp32, or bf16 mixed precision for both frameworks (default: fp32 on cpu, bf16 on cuda)")
    parser.add_argument("--seed", type=int, default=1, help="(default 1)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                        help=f"comma-separated subset of {','.join(FRAMEWORKS)}; trl is required for the ratios "
                        "(default all)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every configuration this many times, in rounds of one run of each (so a slow "
                        "spell of the machine falls on all of them), and report each one's fastest run (default 1)")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before each configuration, wait up to this long for other work to leave the CPUs")
    parser.add_argument("--json", dest="json_out", default=None, help="also write all results to this JSON file")
    parser.add_argument("--verbose", action="store_true", help="show the workers' own output")
    # internal: one configuration in a fresh process
    parser.add_argument("--worker", choices=tuple(FRAMEWORKS), help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch_size % args.micro_batch_size:
        parser.error("--batch-size must be a multiple of --micro-batch-size")
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is warm-up)")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        args.model = args.model[0]
        run_worker(args)
        return
    workers = [w.strip() for w in args.frameworks.split(",") if w.strip()]
    unknown = sorted(set(workers) - set(FRAMEWORKS))
    if unknown or "trl" not in workers:
        raise SystemExit(f"--frameworks must include trl and only name {sorted(FRAMEWORKS)}; got {workers}")
    models = args.model or list(MODELS)
    everything: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as tmp:
        folder = Path(tmp)
        for model in models:
            model_args = argparse.Namespace(**{**vars(args), "model": model})
            print(f"== {model}")
            rows_file, _ = prepare_rows(model_args, folder)
            runs: dict[str, list[dict[str, Any]]] = {worker: [] for worker in FRAMEWORKS if worker in workers}
            for round_ in range(1, args.repeats + 1):
                if args.repeats > 1:
                    print(f" round {round_}/{args.repeats}")
                for worker, done in runs.items():
                    done.append(spawn(model_args, worker, rows_file, folder))
            results = {worker: fastest(done) for worker, done in runs.items()}
            report(model_args, results)
            everything[model] = {"settings": {k: v for k, v in vars(model_args).items()
                                              if k not in ("worker", "rows_file", "result_file", "json_out")},
                                 "results": results}
            print()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(everything, indent=2))
        print(f"results written to {args.json_out}")


if __name__ == "__main__":
    main()
