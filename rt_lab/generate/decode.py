"""Batched, KV-cached generation over a prompt set, written as AlpacaEval `model_outputs.json`.

Prompts go longest first into rt_lab.generate.loop, which keeps `generation.batch_size` rows decoding: a row
leaves as it finishes and the next prompt takes its place. Each answer is appended to a JSONL file as it
finishes; a rerun answers only the prompts still missing. An optional rule head (rt_lab.generate.rule_head)
scores every step."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformers import StopStringCriteria

from rt_lab.config.generation import GenerationConfig
from rt_lab.io import atomic_write_json, read_append_log
from rt_lab.layout import RunDir
from rt_lab.data.tokens import tokenize
from rt_lab.data.prompts import Prompt
from rt_lab.generate.loop import decode
from rt_lab.generate.rules import Rule
from rt_lab.generate.stopping import stop_token_ids, until_stop
from rt_lab.data.templates import Template

log = logging.getLogger(__name__)

# Answers encoded prompts, yielding `(index, answer)` as each finishes, in any order: the one thing a generation
# backend provides.
BatchGenerator = Callable[[Sequence["EncodedPrompt"]], Iterable[tuple[int, str]]]


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


def generation_config(cfg: GenerationConfig, tokenizer: Any) -> Any:
    from transformers import GenerationConfig as TransformersGenerationConfig

    sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.do_sample else {}
    return TransformersGenerationConfig(max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.get("min_new_tokens"),
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


@torch.inference_mode()
def generate_stream(model: Any, tokenizer: Any, prompts: Sequence[EncodedPrompt], config: Any,
                    rules: Sequence[Rule] = (), batch_size: int | None = None) -> Iterator[tuple[int, str]]:
    """`(index, answer)` for each prompt as it finishes, at most `batch_size` (default: all) decoding at once."""
    config = copy.deepcopy(config)
    config.eos_token_id = stops = stop_token_ids(tokenizer, model.generation_config)
    # transformers' matcher of the config's stop strings against token ids (it needs the tokenizer's vocabulary)
    stop = StopStringCriteria(tokenizer, config.stop_strings) if config.stop_strings else None
    for index, tokens in decode(model, [p.ids for p in prompts], config, batch_size or len(prompts),
                                tokenizer.pad_token_id, rules, [p.instruction_start for p in prompts], stop):
        yield index, tokenizer.decode(until_stop(tokens, stops), skip_special_tokens=True)


def in_prompt_order(answers: Iterable[tuple[int, str]], count: int) -> list[str]:
    """A generator's answers as a list in prompt order."""
    texts: list[str | None] = [None] * count
    for index, text in answers:
        texts[index] = text
    missing = [i for i, text in enumerate(texts) if text is None]
    if missing:
        raise RuntimeError(f"the generator left prompts {missing} unanswered")
    return texts  # type: ignore[return-value]


def generate_batch(model: Any, tokenizer: Any, prompts: Sequence[EncodedPrompt], config: Any,
                   rules: Sequence[Rule] = ()) -> list[str]:
    """Answers to `prompts`, decoded together, in their order."""
    return in_prompt_order(generate_stream(model, tokenizer, prompts, config, rules), len(prompts))


def generation_device(name: str) -> torch.device:
    """`generation.device`: `auto` is the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def hf_batch_generator(model: Any, tokenizer: Any, cfg: GenerationConfig, rules: Sequence[Rule] = ()) -> BatchGenerator:
    """In-process generation with transformers (the default `generation.backend=hf`), on `generation.device`:
    models load on the CPU, and a trained one comes back there from Lightning. `generation.batch_size` rows decode
    at once, continuously refilled."""
    config = generation_config(cfg, tokenizer)
    device = generation_device(cfg.get("device") or "auto")
    if next(model.parameters()).device != device:
        model.to(device)
    model.eval()
    return lambda prompts: generate_stream(model, tokenizer, prompts, config, rules, cfg.get("batch_size"))


def generate_outputs(answer: BatchGenerator, tokenizer: Any, template: Template, prompts: Sequence[Prompt],
                     bos: str, generator: str, out_dir: Path, instruction_prefix: str = "") -> Path:
    """Answer every prompt and write `model_outputs.json` (AlpacaEval format) in `out_dir`. The model reads
    `instruction_prefix + instruction` in the template (Hewitt et al.'s `--instruction_prefix`); the records keep
    the instruction as the prompt set gives it, which is what a judge and a reference's outputs are matched on."""
    encoded = {p.id: encode_prompt(instruction_prefix + p.instruction, template, tokenizer, bos) for p in prompts}
    partial = RunDir(out_dir).generations
    outputs = answered(partial)
    todo = sorted((p for p in prompts if p.id not in outputs), key=lambda p: (-len(encoded[p.id].ids), p.id))
    if len(todo) < len(prompts):
        log.info("resuming generation: %d of %d prompts already answered", len(prompts) - len(todo), len(prompts))
    out_dir.mkdir(parents=True, exist_ok=True)
    with partial.open("a", encoding="utf-8") as sink, \
            tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="generating", unit="prompt") as progress:
        for index, text in answer([encoded[p.id] for p in todo]) if todo else ():  # nothing asks for the model
            outputs[todo[index].id] = text
            sink.write(json.dumps({"id": todo[index].id, "output": text}, ensure_ascii=False) + "\n")
            sink.flush()
            progress.update()
    missing = [p.id for p in todo if p.id not in outputs]
    if missing:
        raise RuntimeError(f"generation left {len(missing)} prompts unanswered, e.g. {missing[:3]}")
    records = [{"instruction": p.instruction, "output": outputs[p.id], "generator": generator,
                "dataset": p.dataset} for p in prompts]
    path = RunDir(out_dir).outputs
    atomic_write_json(path, records)
    return path
