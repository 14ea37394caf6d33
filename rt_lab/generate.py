"""Batched, KV-cached generation over a prompt set, written as AlpacaEval `model_outputs.json`.

Prompts are sorted by length into left-padded batches; each finished batch is appended to a JSONL file, so an
interrupted run resumes where it stopped and skips the prompts already answered."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from rt_lab.io import atomic_write_json
from rt_lab.masking import tokenize
from rt_lab.prompts import Prompt
from rt_lab.templates import Template

log = logging.getLogger(__name__)


def done_ids(partial: Path) -> dict[str, dict]:
    """Records already generated (a torn last line from a crash is ignored and regenerated)."""
    records = {}
    if partial.is_file():
        for line in partial.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[record["id"]] = record
    return records


def generation_config(cfg: Any, tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.do_sample else {}
    return GenerationConfig(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, use_cache=True,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **sampling)


@torch.inference_mode()
def generate_batch(model: Any, tokenizer: Any, prompt_ids: Sequence[list[int]], config: Any) -> list[str]:
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for row, ids in enumerate(prompt_ids):  # left padding: every prompt ends where generation starts
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention[row, width - len(ids):] = 1
    device = next(model.parameters()).device
    output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                            generation_config=config)
    return tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)


def generate_outputs(model: Any, tokenizer: Any, template: Template, prompts: Sequence[Prompt], cfg: Any,
                     bos: str, generator: str, out_dir: Path) -> Path:
    """Answer every prompt and write `model_outputs.json` (AlpacaEval format) in `out_dir`."""
    partial = out_dir / "generations.jsonl"
    records = done_ids(partial)
    todo = [p for p in prompts if p.id not in records]
    if records:
        log.info("resuming generation: %d of %d prompts already answered", len(prompts) - len(todo), len(prompts))
    encoded = {p.id: tokenize(template.prompt(p.instruction, tokenizer), tokenizer, bos)[0] for p in todo}
    todo.sort(key=lambda p: -len(encoded[p.id]))
    config = generation_config(cfg, tokenizer)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    batches = [todo[i:i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
    with partial.open("a", encoding="utf-8") as sink:
        for batch in tqdm(batches, desc="generating", unit="batch", disable=not batches):
            outputs = generate_batch(model, tokenizer, [encoded[p.id] for p in batch], config)
            for prompt, output in zip(batch, outputs):
                records[prompt.id] = {"id": prompt.id, "output": output}
                sink.write(json.dumps(records[prompt.id], ensure_ascii=False) + "\n")
            sink.flush()
    final = [{"instruction": p.instruction, "output": records[p.id]["output"], "generator": generator,
              "dataset": p.dataset} for p in prompts]
    path = out_dir / "model_outputs.json"
    atomic_write_json(path, final)
    return path
