"""The one end-of-response policy of every generation backend.

A response ends at the first of the tokenizer's EOS and the model's own EOS ids (`generation_config.json`, else
`config.json`: Llama-3.x lists `<|eot_id|>` and `<|eom_id|>` there besides the tokenizer's `<|end_of_text|>`). That
stop token is not part of the answer's text. vLLM applies this by default; the transformers backend is given it.
The `eos_ramp` rule boosts the tokenizer's EOS only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def model_generation_config(path: str | Path) -> Any:
    """What transformers' `from_pretrained` gives a model as `generation_config`, and vLLM reads: the folder's
    `generation_config.json`, else one derived from its `config.json`."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(path))


def stop_token_ids(tokenizer: Any, generation_config: Any) -> list[int]:
    """The tokens that end a response: the tokenizer's EOS first, then the model's other EOS ids."""
    model_eos = generation_config.eos_token_id
    model_eos = [model_eos] if isinstance(model_eos, int) else list(model_eos or [])
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return ids + [i for i in dict.fromkeys(model_eos) if i not in ids]


def until_stop(ids: Sequence[int], stops: Sequence[int]) -> list[int]:
    """A response's tokens up to, not including, its first stop token (what vLLM turns into text)."""
    end = next((i for i, token in enumerate(ids) if token in stops), len(ids))
    return list(ids[:end])
