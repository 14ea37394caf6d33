"""The decoding loop (rt_lab/generate/loop.py) answers as `model.generate` does while finished rows leave the batch
and waiting prompts take their places: checked on the tiny model against transformers' own generate, with and
without the rule head."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, DeepseekV3Config, Gemma2Config

from rt_lab.data.templates import TagTemplate
from rt_lab.generate.decode import encode_prompt, generation_config
from rt_lab.generate.loop import decode, left_padded, prefill_packed, prefill_padded
from rt_lab.generate.rule_head import RuleHead
from rt_lab.generate.rules import build_rules

TEXTS = ["Hi", "Write a long and winding sentence about rivers and the sea.", "Why?", "List three colours.",
         "Tell me a story about a cat.", "Name a bird that cannot fly, and say where it lives.", "Count to five."]
RULES = ("eos_ramp", "uniform", "diversity")


@pytest.fixture(scope="module")
def model(tiny_path):
    return AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    return [encode_prompt(text, TagTemplate(), tiny_tokenizer, "auto") for text in TEXTS]


def config_with_eos(tokenizer, eos: int, max_new_tokens: int = 16, **extra):
    config = generation_config(OmegaConf.create({"max_new_tokens": max_new_tokens, "do_sample": False,
                                                 "temperature": 1.0, "top_p": 1.0, **extra}), tokenizer)
    config.eos_token_id = eos
    return config


def ragged_eos(model, tokenizer, prompts):
    """A token the untrained model emits at different steps for different prompts: used as EOS, it makes rows
    finish at different lengths."""
    ids, attention = left_padded([p.ids for p in prompts], tokenizer.pad_token_id)
    never = config_with_eos(tokenizer, eos=tokenizer.vocab_size + 10 ** 6)
    tokens = model.generate(input_ids=ids, attention_mask=attention, generation_config=never)[:, ids.shape[1]:]
    for token in tokens[0].tolist():
        first = [row.tolist().index(token) if token in row.tolist() else None for row in tokens]
        if len(set(first)) >= 3:  # None: the row never emits it and runs to max_new_tokens
            return token
    pytest.fail("no token of the untrained model ends its rows at different steps")


def generate_one(model, tokenizer, prompt, config, rules):
    """transformers' generate on one prompt alone (no padding), with the rule head as a logits processor."""
    ids = torch.tensor([prompt.ids])
    head = [RuleHead(rules, torch.tensor([len(prompt.ids)]), torch.tensor([prompt.instruction_start]))] \
        if rules else None
    row = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                         logits_processor=head)[0, ids.shape[1]:].tolist()
    eos = config.eos_token_id
    return row[:row.index(eos) + 1] if eos in row else row


def forward_shape(kwargs) -> tuple[int, int, int]:
    """(rows, new tokens per row, attention width) of one forward of the loop. A prefill counts as its prompts, the
    longest prompt's length, and that width, whether packed (one row whose position ids restart at every prompt)
    or left-padded."""
    ids, positions = kwargs["input_ids"], kwargs["position_ids"]
    if not (positions == 0).any():  # a decoding step: every row's newest token comes after its prompt
        return ids.shape[0], 1, kwargs["attention_mask"].shape[1]
    longest = int(positions.max()) + 1
    prompts = int((positions == 0).sum()) if ids.shape[0] == 1 else ids.shape[0]
    return prompts, longest, longest


def decoded(model, tokenizer, prompts, config, batch_size, rules=()):
    """The loop's answers in prompt order, with the (rows, new tokens, attention width) of every forward it ran."""
    shapes = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: shapes.append(forward_shape(kwargs)),
                                           with_kwargs=True)
    try:
        answers = dict(decode(model, [p.ids for p in prompts], config, batch_size, tokenizer.pad_token_id, rules,
                              [p.instruction_start for p in prompts]))
    finally:
        hook.remove()
    return [answers[i] for i in range(len(prompts))], shapes


@pytest.mark.parametrize("rule_names", [(), RULES], ids=["plain", "rule_head"])
@pytest.mark.parametrize("batch_size", [len(TEXTS), 3, 1])  # 1: every row leaves an empty batch
def test_greedy_answers_equal_generate_one_prompt_at_a_time(model, tiny_tokenizer, prompts, rule_names, batch_size):
    from tests.test_rules import paper_rules_cfg

    config = config_with_eos(tiny_tokenizer, ragged_eos(model, tiny_tokenizer, prompts))
    rules = build_rules(paper_rules_cfg(*rule_names), tiny_tokenizer) if rule_names else []
    answers, shapes = decoded(model, tiny_tokenizer, prompts, config, batch_size, rules)
    assert answers == [generate_one(model, tiny_tokenizer, p, config, rules) for p in prompts]
    rows = [batch for batch, _, _ in shapes]
    assert max(rows) == batch_size and (batch_size == 1 or min(rows) < batch_size)  # finished rows left
    # no work on finished rows: a row runs one decoding forward per token after its first (its prefill's)
    assert sum(batch for batch, new, _ in shapes if new == 1) == sum(len(a) - 1 for a in answers)


def test_freed_rows_are_refilled_and_padding_every_row_shares_is_cut(model, tiny_tokenizer, prompts):
    config = config_with_eos(tiny_tokenizer, ragged_eos(model, tiny_tokenizer, prompts))
    answers, shapes = decoded(model, tiny_tokenizer, prompts, config, batch_size=2)
    prefills = [rows for rows, new, _ in shapes if new > 1]
    assert prefills == [2, 2, 2, 1]  # a batch at a time, joining as rows freed up
    assert all(rows <= 2 for rows, _, _ in shapes)
    # after the longest prompt's row has left, no forward is as wide as it was
    longest = max(len(p.ids) for p in prompts)
    last_wide = max(i for i, (_, _, width) in enumerate(shapes) if width >= longest)
    assert any(width < longest for _, _, width in shapes[last_wide + 1:])
    assert answers == [generate_one(model, tiny_tokenizer, p, config, []) for p in prompts]


def test_prompts_are_prefilled_a_batch_at_a_time_and_refill_each_freed_row(model, tiny_tokenizer):
    prompts = [encode_prompt(text, TagTemplate(), tiny_tokenizer, "auto") for text in TEXTS * 3]
    config = config_with_eos(tiny_tokenizer, ragged_eos(model, tiny_tokenizer, prompts[:len(TEXTS)]))
    answers, shapes = decoded(model, tiny_tokenizer, prompts, config, batch_size=8)
    assert [rows for rows, new, _ in shapes if new > 1] == [8, 8, 5]
    # while prompts wait, a row freed in one step is taken by a prefilled prompt in the next
    last_prefill = max(i for i, (_, new, _) in enumerate(shapes) if new > 1)
    decoding = [rows for rows, new, _ in shapes[:last_prefill] if new == 1]
    refilled = [(before, after) for before, after in zip(decoding, decoding[1:]) if before < 8]
    assert refilled and all(after == 8 for _, after in refilled)
    assert answers == [generate_one(model, tiny_tokenizer, p, config, []) for p in prompts]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_sdpa_prefills_packed_with_no_padding_eager_left_padded_and_both_answer_as_alone(
        tiny_path, tiny_tokenizer, prompts, attention):
    """sdpa attends per packed prompt (`sdpa_segments`), so its prefill is one row of exactly the prompts' tokens;
    eager would pay for a block mask over the whole row, so it prefills left-padded."""
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32, attn_implementation=attention).eval()
    config = config_with_eos(tiny_tokenizer, ragged_eos(model, tiny_tokenizer, prompts))
    fed = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: fed.append(kwargs["input_ids"].shape),
                                           with_kwargs=True)
    try:
        answers = dict(decode(model, [p.ids for p in prompts], config, 3, tiny_tokenizer.pad_token_id))
    finally:
        hook.remove()
    groups = (prompts[:3], prompts[3:6], prompts[6:])
    prefills = [tuple(shape) for shape in fed if shape[1] > 1]
    if attention == "sdpa":
        assert prefills == [(1, sum(len(p.ids) for p in group)) for group in groups]
    else:
        assert prefills == [(len(group), max(len(p.ids) for p in group)) for group in groups]
    assert model.config._attn_implementation == attention
    assert [answers[i] for i in range(len(prompts))] == [generate_one(model, tiny_tokenizer, p, config, [])
                                                         for p in prompts]


def assert_packed_prefill_equals_padded(model, prompts):
    indices = torch.arange(len(prompts))
    with torch.inference_mode():
        packed = prefill_packed(model, prompts, indices, pad_id=0)
        padded = prefill_padded(model, prompts, indices, pad_id=0)
    assert model.config._attn_implementation == "sdpa"
    for name in ("ids", "attention", "position"):
        assert torch.equal(getattr(packed, name), getattr(padded, name))
    torch.testing.assert_close(packed.logits, padded.logits)
    real = padded.attention.bool()
    for mine, theirs in zip(packed.cache.layers, padded.cache.layers):
        for name in ("keys", "values"):
            ours, reference = getattr(mine, name), getattr(theirs, name)
            assert ours.shape == reference.shape and torch.isfinite(ours).all()
            torch.testing.assert_close(ours.transpose(1, 2)[real], reference.transpose(1, 2)[real])


@pytest.mark.parametrize("lengths", [(1, 1, 3), (4,), (1,), (6, 2, 5, 1)])
def test_a_packed_prefill_gives_the_padded_prefills_logits_and_cache(model, lengths):
    """Prompts of one token, a prompt alone, and groups of ragged prompts: every real column of the packed
    prefill's cache, laid out left-padded, equals the padded prefill's, and so do the last positions' logits."""
    generator = torch.Generator().manual_seed(sum(lengths))
    assert_packed_prefill_equals_padded(
        model, [torch.randint(3, 200, (length,), generator=generator).tolist() for length in lengths])


def test_a_packed_prefill_lays_out_latent_caches_whose_keys_and_values_differ_in_width():
    """Multi-head latent attention (DeepSeek-V3, random weights) caches keys and values of different widths."""
    torch.manual_seed(0)
    deepseek = AutoModelForCausalLM.from_config(DeepseekV3Config(
        vocab_size=96, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, q_lora_rank=16, kv_lora_rank=8, qk_rope_head_dim=4,
        qk_nope_head_dim=8, v_head_dim=6, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
        first_k_dense_replace=1, n_group=1, topk_group=1), dtype=torch.float32).eval()
    assert_packed_prefill_equals_padded(deepseek, [[5, 6, 7], [8], [9, 10, 11, 12, 13]])


def config_with_eos_id(eos: int, max_new_tokens: int):
    from transformers import GenerationConfig

    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=0)


def test_a_cache_rows_cannot_join_decodes_static_batches_with_the_same_answers():
    """Gemma-2's sliding-window layers cannot take joining rows: the loop decodes `batch_size` prompts at a time,
    rows still leaving as they finish (random weights, prompts of random ids)."""
    torch.manual_seed(0)
    gemma = AutoModelForCausalLM.from_config(Gemma2Config(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=4), dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 96, (length,), generator=generator).tolist() for length in (3, 9, 5, 7, 4)]
    never = config_with_eos_id(96 + 10, 12)
    alone = [gemma.generate(input_ids=torch.tensor([p]), generation_config=never)[0, len(p):].tolist()
             for p in prompts]
    eos = next(t for t in alone[0] if sum(t in row for row in alone) >= 2)
    config = config_with_eos_id(eos, 12)
    shapes = []
    hook = gemma.register_forward_pre_hook(lambda module, args, kwargs: shapes.append(
        tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        answers = dict(decode(gemma, prompts, config, 2, 0))
    finally:
        hook.remove()
    expected = [row[:row.index(eos) + 1] if eos in row else row for row in alone]
    assert [answers[i] for i in range(len(prompts))] == expected
    prefill_rows = [rows for rows, width in shapes if width > 1]
    assert prefill_rows == [2, 2, 1]  # a new batch only when the last one has ended


def test_min_new_tokens_blocks_eos_and_max_new_tokens_caps_every_row(model, tiny_tokenizer, prompts):
    eos = ragged_eos(model, tiny_tokenizer, prompts)
    answers, _ = decoded(model, tiny_tokenizer, prompts, config_with_eos(tiny_tokenizer, eos, max_new_tokens=10,
                                                                          min_new_tokens=10), batch_size=3)
    assert [len(a) for a in answers] == [10] * len(prompts)
    assert all(eos not in a for a in answers)


def test_sampling_draws_from_the_seeded_generator_and_every_row_ends(model, tiny_tokenizer, prompts):
    config = config_with_eos(tiny_tokenizer, tiny_tokenizer.eos_token_id, do_sample=True, temperature=0.7,
                             top_p=0.9)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(decoded(model, tiny_tokenizer, prompts, config, batch_size=3)[0])
    assert runs[0] == runs[1]
    greedy = config_with_eos(tiny_tokenizer, tiny_tokenizer.eos_token_id)
    assert runs[0] != decoded(model, tiny_tokenizer, prompts, greedy, batch_size=3)[0]
    assert all(1 <= len(answer) <= 16 for answer in runs[0])


def test_rules_without_instruction_starts_are_refused(model, tiny_tokenizer, prompts):
    from tests.test_rules import paper_rules_cfg

    rules = build_rules(paper_rules_cfg(*RULES), tiny_tokenizer)
    with pytest.raises(ValueError, match="needs instruction_starts"):
        next(decode(model, [p.ids for p in prompts], config_with_eos_id(0, 4), 2, 0, rules))
