"""A tiny Llama and a byte-level BPE tokenizer trained in a fraction of a second, for tests and smoke runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rt_lab.paths import package_path
from rt_lab.io import read_records

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]
TAGS = ["<|user|>", "<|assistant|>", "<|system|>", "<|A|>", "<|B|>"]


def corpus() -> list[str]:
    texts = list(TAGS)
    for _, record in read_records(package_path("pkg://sample_data/sample.jsonl")):
        texts.extend(message["content"] for message in record["messages"])
    return texts


def build_tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    # Adds BOS like Llama's tokenizer, so tests cover the BOS-adding path.
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def build_tiny(spec: Any, folder: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(spec.vocab_size)
    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "rt_lab_tiny.json").write_text(json.dumps(dict(spec), sort_keys=True))
