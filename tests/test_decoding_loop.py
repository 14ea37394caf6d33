"""The decoding loop (rt_lab/generate/loop.py) answers as `model.generate` does, while finished rows leave the
batch: checked on the tiny model against transformers' own generate, with and without the rule head."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from rt_lab.data.templates import TagTemplate
from rt_lab.generate.decode import batch_rule_head, encode_prompt, generation_config, left_padded
from rt_lab.generate.loop import decode
from rt_lab.generate.rules import build_rules

TEXTS = ["Hi", "Write a long and winding sentence about rivers and the sea.", "Why?", "List three colours.",
         "Tell me a story about a cat."]


@pytest.fixture(scope="module")
def model(tiny_path):
    return AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32).eval()


def config_with_eos(tokenizer, eos: int, max_new_tokens: int = 16, **extra):
    config = generation_config(OmegaConf.create({"max_new_tokens": max_new_tokens, "do_sample": False,
                                                 "temperature": 1.0, "top_p": 1.0, **extra}), tokenizer)
    config.eos_token_id = eos
    return config


def ragged_eos(model, tokenizer, ids, attention):
    """A token the untrained model emits at different steps in different rows: used as EOS, it makes the rows of
    one batch finish at different lengths."""
    never = config_with_eos(tokenizer, eos=tokenizer.vocab_size + 10 ** 6)
    tokens = model.generate(input_ids=ids, attention_mask=attention, generation_config=never)[:, ids.shape[1]:]
    for token in tokens[0].tolist():
        first = [row.tolist().index(token) if token in row.tolist() else None for row in tokens]
        if len(set(first)) >= 2:  # None: the row never emits it and runs to max_new_tokens
            return token
    pytest.fail("no token of the untrained model ends its rows at different steps")


@pytest.mark.parametrize("rule_names", [(), ("eos_ramp", "uniform", "diversity")], ids=["plain", "rule_head"])
def test_greedy_answers_equal_transformers_generate_while_finished_rows_leave(model, tiny_tokenizer, rule_names):
    from tests.test_rules import paper_rules_cfg

    prompts = [encode_prompt(text, TagTemplate(), tiny_tokenizer, "auto") for text in TEXTS]
    ids, attention = left_padded(prompts, tiny_tokenizer.pad_token_id)
    config = config_with_eos(tiny_tokenizer, ragged_eos(model, tiny_tokenizer, ids, attention))
    rules = build_rules(paper_rules_cfg(*rule_names), tiny_tokenizer) if rule_names else []
    head = batch_rule_head(rules, prompts, "cpu")
    expected = model.generate(input_ids=ids, attention_mask=attention, generation_config=config,
                              logits_processor=[head] if head else None)[:, ids.shape[1]:].tolist()

    batch_sizes = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: batch_sizes.append(
        kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        answers = decode(model, ids, attention, config, batch_rule_head(rules, prompts, "cpu"))
    finally:
        hook.remove()
    eos = config.eos_token_id
    for answer, row in zip(answers, expected):
        cut = row.index(eos) + 1 if eos in row else len(row)
        assert answer == row[:cut]
    assert batch_sizes[0] == len(prompts) and batch_sizes[-1] < len(prompts)  # finished rows left
    assert batch_sizes == sorted(batch_sizes, reverse=True)
    assert len(batch_sizes) == max(len(a) for a in answers)  # no forward after the last row ended


def test_min_new_tokens_blocks_eos_and_max_new_tokens_caps_every_row(model, tiny_tokenizer):
    prompts = [encode_prompt(text, TagTemplate(), tiny_tokenizer, "auto") for text in TEXTS]
    ids, attention = left_padded(prompts, tiny_tokenizer.pad_token_id)
    eos = ragged_eos(model, tiny_tokenizer, ids, attention)
    answers = decode(model, ids, attention, config_with_eos(tiny_tokenizer, eos, max_new_tokens=10,
                                                            min_new_tokens=10))
    assert [len(a) for a in answers] == [10] * len(prompts)
    assert all(eos not in a for a in answers)


def test_sampling_draws_from_the_seeded_generator_and_every_row_ends(model, tiny_tokenizer):
    prompts = [encode_prompt(text, TagTemplate(), tiny_tokenizer, "auto") for text in TEXTS]
    ids, attention = left_padded(prompts, tiny_tokenizer.pad_token_id)
    config = config_with_eos(tiny_tokenizer, tiny_tokenizer.eos_token_id, do_sample=True, temperature=0.7,
                             top_p=0.9)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(decode(model, ids, attention, config))
    assert runs[0] == runs[1]
    assert runs[0] != decode(model, ids, attention, config_with_eos(tiny_tokenizer, tiny_tokenizer.eos_token_id))
    assert all(1 <= len(answer) <= 16 for answer in runs[0])
