"""Batched, KV-cached generation over a prompt set, written as AlpacaEval `model_outputs.json`.

Prompts are sorted by length into a fixed plan of left-padded batches, decoded by rt_lab.generate.loop (rows leave
a batch as they finish). Each finished batch is appended to a
JSONL file; a rerun skips the batches already answered and regenerates the others whole, so an interrupted run
ends with the same file as an uninterrupted one. An optional rule head (rt_lab.generate.rule_head) joins every batch."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import StopStringCriteria

from rt_lab.io import atomic_write_json, read_append_log
from rt_lab.layout import RunDir
from rt_lab.data.tokens import tokenize
from rt_lab.data.prompts import Prompt
from rt_lab.generate.loop import decode
from rt_lab.generate.rule_head import RuleHead
from rt_lab.generate.rules import Rule
from rt_lab.generate.stopping import stop_token_ids, until_stop
from rt_lab.data.templates import Template

log = logging.getLogger(__name__)

# Answers one batch of encoded prompts: the one thing a generation backend provides.
BatchGenerator = Callable[[Sequence["EncodedPrompt"]], list[str]]


@dataclass(frozen=True)
class EncodedPrompt:
    ids: list[int]
    instruction_start: int  # index of the first token at or after the instruction's first character


def encode_prompt(instruction: str, template: Template, tokenizer: Any, bos: str) -> EncodedPrompt:
    text = template.prompt(instruction, tokenizer)
    ids, offsets = tokenize(text, tokenizer, bos)
    start = template.instruction_offset(instruction, tokenizer)
    first = next((i for i, (lo, hi) in enumerate(offsets) if hi > lo and lo >= start), len(ids))
    return EncodedPrompt(ids, first)


def answered(partial: Path) -> dict[str, str]:
    """Outputs already generated, by prompt id."""
    return {record["id"]: record["output"] for record in read_append_log(partial)}


def generation_config(cfg: Any, tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.do_sample else {}
    return GenerationConfig(max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.get("min_new_tokens"),
                            do_sample=cfg.do_sample, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                            stop_strings=list(cfg.get("stop") or []) or None, **sampling)


def finish_output(text: str, stop: Sequence[str], strip: str | None) -> str:
    """An output as the run keeps it: cut before the first stop string (the hf backend's text still holds the one
    it stopped at, vLLM drops it), then, when `strip` is a string, stripped of whitespace and of `strip`'s
    characters at its end (An et al.'s `.strip()` then `.rstrip("`")`)."""
    cuts = [at for at in (text.find(marker) for marker in stop) if at >= 0]
    if cuts:
        text = text[:min(cuts)]
    return text if strip is None else text.strip().rstrip(strip)


def left_padded(prompts: Sequence[EncodedPrompt], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's input ids and attention mask, left-padded: every prompt ends where generation starts."""
    width = max(len(p.ids) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt.ids):] = torch.tensor(prompt.ids)
        attention[row, width - len(prompt.ids):] = 1
    return input_ids, attention


def batch_rule_head(rules: Sequence[Rule], prompts: Sequence[EncodedPrompt],
                    device: torch.device | str) -> RuleHead | None:
    """The rule head of `left_padded(prompts)` (None without rules). Its positions live where the logits do: no
    host-to-device copy per decoding step."""
    if not rules:
        return None
    width = max(len(p.ids) for p in prompts)
    instruction_start = torch.tensor([width - len(p.ids) + p.instruction_start for p in prompts], device=device)
    return RuleHead(rules, torch.full((len(prompts),), width, device=device), instruction_start)


@torch.inference_mode()
def generate_batch(model: Any, tokenizer: Any, prompts: Sequence[EncodedPrompt], config: Any,
                   rules: Sequence[Rule] = ()) -> list[str]:
    input_ids, attention = left_padded(prompts, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    head = batch_rule_head(rules, prompts, device)
    config = copy.deepcopy(config)
    config.eos_token_id = stops = stop_token_ids(tokenizer, model.generation_config)
    # transformers' matcher of the config's stop strings against token ids (it needs the tokenizer's vocabulary)
    stop = StopStringCriteria(tokenizer, config.stop_strings) if config.stop_strings else None
    tokens = decode(model, input_ids.to(device), attention.to(device), config, head, stop)
    return tokenizer.batch_decode([until_stop(row, stops) for row in tokens], skip_special_tokens=True)


def generation_device(name: str) -> torch.device:
    """`generation.device`: `auto` is the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def hf_batch_generator(model: Any, tokenizer: Any, cfg: Any, rules: Sequence[Rule] = ()) -> BatchGenerator:
    """In-process generation with transformers (the default `generation.backend=hf`), on `generation.device`:
    models load on the CPU, and a trained one comes back there from Lightning."""
    config = generation_config(cfg, tokenizer)
    device = generation_device(cfg.get("device") or "auto")
    if next(model.parameters()).device != device:
        model.to(device)
    model.eval()
    return lambda batch: generate_batch(model, tokenizer, batch, config, rules)


def generate_outputs(answer: BatchGenerator, tokenizer: Any, template: Template, prompts: Sequence[Prompt],
                     batch_size: int, bos: str, generator: str, out_dir: Path, instruction_prefix: str = "") -> Path:
    """Answer every prompt and write `model_outputs.json` (AlpacaEval format) in `out_dir`. The model reads
    `instruction_prefix + instruction` in the template (Hewitt et al.'s `--instruction_prefix`); the records keep
    the instruction as the prompt set gives it, which is what a judge and a reference's outputs are matched on."""
    encoded = {p.id: encode_prompt(instruction_prefix + p.instruction, template, tokenizer, bos) for p in prompts}
    ordered = sorted(prompts, key=lambda p: (-len(encoded[p.id].ids), p.id))
    plan = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    partial = RunDir(out_dir).generations
    outputs = answered(partial)
    todo = [batch for batch in plan if not all(p.id in outputs for p in batch)]
    if len(todo) < len(plan):
        log.info("resuming generation: %d of %d batches already answered", len(plan) - len(todo), len(plan))
    out_dir.mkdir(parents=True, exist_ok=True)
    with partial.open("a", encoding="utf-8") as sink, \
            tqdm(total=len(plan), initial=len(plan) - len(todo), desc="generating", unit="batch") as progress:
        for batch in todo:
            texts = answer([encoded[p.id] for p in batch])
            for prompt, text in zip(batch, texts):
                outputs[prompt.id] = text
                sink.write(json.dumps({"id": prompt.id, "output": text}, ensure_ascii=False) + "\n")
            sink.flush()
            progress.update()
    records = [{"instruction": p.instruction, "output": outputs[p.id], "generator": generator,
                "dataset": p.dataset} for p in prompts]
    path = RunDir(out_dir).outputs
    atomic_write_json(path, records)
    return path
