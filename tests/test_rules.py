"""The rules (rt_lab/generate/rules.py): string->id resolution, each rule's arithmetic against hand computation,
the diversity scopes, a rule added through the registry, and the scopes' effect on a real model's answers."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from rt_lab.config.rules import RulesConfig

from helpers import SHARED_DATA, needs_shared_data

from rt_lab.generate.rule_head import RuleHead
from rt_lab.generate.rules import (RULES, Diversity, EosRamp, Rule, Step, build_rules, register_rule,
                                 resolve_token_strings)

PAPER_TABLE_LLAMA2 = {"<": 29966, " <": 529, "|": 29989, " I": 306, "I": 29902, " We": 1334, "What": 5618,
                      " should": 881, " *": 334, " -": 448, "   ": 1678, " #": 396, " ##": 444, "\n": 13, "!": 29991}


@pytest.fixture(scope="module")
def llama2_like_tokenizer():
    """A SentencePiece-style tokenizer (Metaspace, byte fallback, Llama-2's decoder) holding the paper's pieces
    at their Llama-2 ids, and the byte pieces at Llama-2's ids 3..258 (so `<`, `!`, newline also exist as bytes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = {"<unk>": 0, "<s>": 1, "</s>": 2}
    pieces.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    pieces.update({"<": 29966, "▁<": 529, "|": 29989, "▁I": 306, "I": 29902, "▁We": 1334, "What": 5618,
                   "▁should": 881, "▁*": 334, "▁-": 448, "▁▁▁": 1678, "▁#": 396, "▁##": 444, "!": 29991,
                   "▁a": 263, "a": 29874, "▁": 29871})
    vocab = {f"filler{i}": i for i in range(32000)}
    vocab = {piece: i for piece, i in vocab.items() if i not in set(pieces.values())} | pieces
    model = models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def paper_rules_cfg(*enabled):
    return OmegaConf.merge(OmegaConf.structured(RulesConfig), {"enabled": list(enabled)})


def test_paper_table_resolves_to_the_llama2_ids(llama2_like_tokenizer):
    table = OmegaConf.structured(RulesConfig).uniform.table
    resolved = resolve_token_strings(llama2_like_tokenizer, [entry.token for entry in table])
    assert resolved == {text: [i] for text, i in PAPER_TABLE_LLAMA2.items()}


def test_resolution_on_the_real_smollm2_tokenizer(smollm2_tokenizer):
    resolved = resolve_token_strings(smollm2_tokenizer, [" I", "I", "\n", "!", " should", "<"])
    for text, ids in resolved.items():
        assert ids, text
        assert all(smollm2_tokenizer.convert_tokens_to_string([smollm2_tokenizer.convert_ids_to_tokens(i)]) == text
                   for i in ids), text
    assert smollm2_tokenizer.convert_ids_to_tokens(resolved[" I"]) == ["ĠI"]
    assert smollm2_tokenizer.convert_ids_to_tokens(resolved["\n"]) == ["Ċ"]


def step(generated, present=None, vocab=8):
    """A Step whose tokens in `present` (B, V bool) occur in every scope."""
    generated = torch.tensor(generated)
    present = torch.zeros(len(generated), vocab, dtype=torch.bool) if present is None else present
    starts = torch.zeros(len(generated), dtype=torch.long)
    return Step(generated, present.long() - 1, {"since_user_tag": starts, "response": starts})


def test_eos_ramp_matches_the_formula(tiny_tokenizer):
    rule = EosRamp(tiny_tokenizer)
    ts = [0, 1, 125, 249, 250, 400]
    r = rule.scores(step(ts, vocab=len(tiny_tokenizer)), len(tiny_tokenizer))
    expected = [0.0, 15 * 1 / 250, 15 * 125 / 250, 15 * 249 / 250, 0.0, 0.0]
    assert r[:, tiny_tokenizer.eos_token_id].tolist() == pytest.approx(expected)
    r[:, tiny_tokenizer.eos_token_id] = 0
    assert not r.any()
    capped = EosRamp(tiny_tokenizer, slope=15, horizon=250, cap=3.0).scores(step(ts, vocab=len(tiny_tokenizer)),
                                                                           len(tiny_tokenizer))
    assert capped[:, tiny_tokenizer.eos_token_id].tolist() == pytest.approx([min(3.0, e) for e in expected])


def test_uniform_adds_each_resolved_delta(tiny_tokenizer):
    table = [{"token": " the", "delta": -2}, {"token": "\n", "delta": 1}, {"token": "zzzz-not-a-token", "delta": 9}]
    rule = RULES["uniform"](tiny_tokenizer, table=table)
    vocab = len(tiny_tokenizer)
    r = rule.scores(step([0, 5], vocab=vocab), vocab)
    the, newline = (resolve_token_strings(tiny_tokenizer, [t])[t] for t in (" the", "\n"))
    expected = torch.zeros(vocab)
    expected[the] = -2
    expected[newline] = 1
    assert the and newline
    assert torch.equal(r, expected.expand(2, -1))


def test_diversity_penalises_each_present_token_once():
    rule = RULES["diversity"](None, penalty=1.5)
    present = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert rule.scores(step([3, 3], present, vocab=4), 4).tolist() == [[-1.5, 0, -1.5, 0], [0, 0, 0, -1.5]]
    with pytest.raises(ValueError, match="scope"):
        RULES["diversity"](None, scope="everything")


def test_diversity_scopes_differ_on_repeated_instruction_tokens():
    """Instruction [5, 5, 6] then tags [1, 2], response so far [7, 6]: `since_user_tag` penalises 5, 6, 1, 2, 7
    once each; `response` only 7 and 6. Padding and BOS before the instruction count in neither."""
    input_ids = torch.tensor([[0, 0, 9, 5, 5, 6, 1, 2, 7, 6]])
    scores = {}
    for scope in Diversity.SCOPES:
        head = RuleHead([Diversity(None, penalty=1.5, scope=scope)], response_start=torch.tensor([8]),
                        instruction_start=torch.tensor([3]))
        scores[scope] = head.rule_scores(input_ids, 10)[0]
    penalised = {scope: sorted((r == -1.5).nonzero().flatten().tolist()) for scope, r in scores.items()}
    assert penalised == {"since_user_tag": [1, 2, 5, 6, 7], "response": [6, 7]}
    assert all(((r == 0) | (r == -1.5)).all() for r in scores.values())


def test_unknown_rule_is_named(tiny_tokenizer):
    with pytest.raises(KeyError, match="rules.enabled item='eos' is not a registered rule"):
        build_rules(OmegaConf.create({"enabled": ["eos"]}), tiny_tokenizer)


def test_start_rule_scores_first_tokens(tiny_tokenizer):
    rule = RULES["start"](tiny_tokenizer)
    assert [rule.first_token_score(t) for t in [" I", "I", " Okay", " Sure", "(", " 7", ""]] == \
        [-3.0, -3.0, 10.0, 1.0, -1.0, 0.0, 0.0]
    vocab = len(tiny_tokenizer)
    r = rule.scores(step([0, 1, 2, 3, -1], vocab=vocab), vocab)  # t < 0: a prompt chunk's row in vLLM
    bang, newline = resolve_token_strings(tiny_tokenizer, ["!", "\n"]).values()
    assert r[0].tolist() == pytest.approx((5 * rule.first).tolist())
    assert r[1, bang].tolist() == [15.0] * len(bang) and r[1].abs().sum() == 15.0 * len(bang)
    assert r[2, newline].tolist() == [-10.0] * len(newline) and r[2].abs().sum() == 10.0 * len(newline)
    assert not r[3:].any()


@pytest.mark.parametrize("name", ["eos_ramp", "uniform", "diversity", "start"])
def test_each_built_in_rules_in_place_update_equals_its_weighted_scores(tiny_tokenizer, name):
    """The head adds each rule in place (`add_to`); that must be `weight * scores` exactly."""
    cfg = OmegaConf.structured(RulesConfig)
    rule = RULES[name](tiny_tokenizer, **dict(cfg.get(name) or {}) | {"weight": 0.7})
    vocab = len(tiny_tokenizer)
    present = torch.rand(4, vocab, generator=torch.Generator().manual_seed(0)) < 0.1
    at = step([0, 1, 2, 40], present, vocab=vocab)
    r = torch.randn(4, vocab, generator=torch.Generator().manual_seed(1))
    expected = r + 0.7 * rule.scores(at, vocab)
    rule.add_to(r, at)
    torch.testing.assert_close(r, expected)


def test_a_rule_can_be_added_in_a_few_lines(tiny_tokenizer):
    @register_rule("ban_eos_test")
    class BanEos(Rule):
        def __init__(self, tokenizer, weight=1.0):
            self.weight, self.eos = weight, tokenizer.eos_token_id

        def scores(self, step, vocab_size):
            r = torch.zeros(len(step.generated), vocab_size)
            r[:, self.eos] = -math.inf
            return r

    try:
        (rule,) = build_rules(OmegaConf.create({"enabled": ["ban_eos_test"]}), tiny_tokenizer)
        out = RuleHead([rule], torch.tensor([0]), torch.tensor([0]))(torch.tensor([[1]]), torch.zeros(1, len(tiny_tokenizer)))
        assert out[0, tiny_tokenizer.eos_token_id] == -math.inf
    finally:
        RULES.pop("ban_eos_test")


@needs_shared_data
def test_the_two_diversity_scopes_answer_alpacaeval_prompts_differently_on_smollm2(smollm2_path, smollm2_tokenizer):
    """The real model, greedy, all three paper rules: counting the instruction's tokens (`since_user_tag`) or only
    the response's (`response`) changes what SmolLM2 writes."""
    import json

    from transformers import AutoModelForCausalLM

    from rt_lab.generate.decode import encode_prompt, generate_batch, generation_config
    from rt_lab.data.templates import TagTemplate

    with (SHARED_DATA / "alpaca_eval" / "alpaca_eval.jsonl").open(encoding="utf-8") as handle:
        instructions = [json.loads(line)["instruction"] for _, line in zip(range(4), handle)]
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    prompts = [encode_prompt(text, TagTemplate(), smollm2_tokenizer, "auto") for text in instructions]
    config = generation_config(OmegaConf.create({"max_new_tokens": 24, "do_sample": False, "temperature": 1.0,
                                                 "top_p": 1.0}), smollm2_tokenizer)
    answers = {}
    for scope in Diversity.SCOPES:
        cfg = paper_rules_cfg("eos_ramp", "uniform", "diversity")
        cfg.diversity.scope = scope
        answers[scope] = generate_batch(model, smollm2_tokenizer, prompts, config, build_rules(cfg, smollm2_tokenizer))
    assert sum(a != b for a, b in zip(answers["since_user_tag"], answers["response"])) >= 1
