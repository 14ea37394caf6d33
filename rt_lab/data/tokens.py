"""Tokenizing rendered text with the BOS policy (`model.bos`): shared by training (rt_lab.data.masking) and
generation (rt_lab.generate.decode), so a prompt starts exactly as the training text did."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

BOS_MODES = ("auto", "always", "never")


def wants_bos(tokenizer: Any, bos: str, text: str) -> bool:
    """Whether to put BOS in front of `text`: `auto` follows the tokenizer's own habit."""
    if bos not in BOS_MODES:
        raise ValueError(f"model.bos={bos!r}; expected one of {BOS_MODES}")
    bos_token = tokenizer.bos_token
    if bos == "never" or (bos_token and text.startswith(bos_token)):
        return False
    if bos == "always":
        if tokenizer.bos_token_id is None:
            raise ValueError(f"model.bos=always but tokenizer {tokenizer.name_or_path!r} has no bos_token")
        return True
    return tokenizer_adds_bos(tokenizer)


@lru_cache(maxsize=16)
def tokenizer_adds_bos(tokenizer: Any) -> bool:
    if tokenizer.bos_token_id is None:
        return False
    return tokenizer("x", add_special_tokens=True).input_ids[:1] == [tokenizer.bos_token_id]


def tokenize(text: str, tokenizer: Any, bos: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of `text`, with BOS (offsets (0, 0)) as `bos` says; nothing else added."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    offsets = [tuple(pair) for pair in encoded["offset_mapping"]]
    if wants_bos(tokenizer, bos, text):
        ids.insert(0, tokenizer.bos_token_id)
        offsets.insert(0, (0, 0))
    return ids, offsets
