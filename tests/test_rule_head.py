"""The rule head (rt_lab/generate/rule_head.py): the product of experts, the position table kept only when a rule
reads history, and per-row state inside real batched, left-padded, KV-cached decoding."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from rt_lab.generate.rule_head import RuleHead
from rt_lab.generate.rules import Rule, build_rules
from test_rules import paper_rules_cfg


def test_the_head_keeps_no_token_table_when_no_rule_reads_history(tiny_tokenizer):
    input_ids = torch.tensor([[5, 6, 7, 8, 9]])
    without = RuleHead(build_rules(paper_rules_cfg("eos_ramp", "uniform"), tiny_tokenizer), torch.tensor([3]),
                       torch.tensor([1]))
    without(input_ids, torch.zeros(1, len(tiny_tokenizer)))
    assert without.state.last_seen is None
    with_diversity = RuleHead(build_rules(paper_rules_cfg("eos_ramp", "diversity"), tiny_tokenizer),
                              torch.tensor([3]), torch.tensor([1]))
    with_diversity(input_ids, torch.zeros(1, len(tiny_tokenizer)))
    assert with_diversity.state.last_seen is not None


def test_weights_scale_rules_and_the_head_is_a_product_of_experts(tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    rules = build_rules(OmegaConf.create({"enabled": ["eos_ramp"], "eos_ramp": {"weight": 2.0}}), tiny_tokenizer)
    head = RuleHead(rules, response_start=torch.tensor([2, 3]), instruction_start=torch.tensor([0, 0]))
    input_ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 8, 9]])  # t = 3 and 2
    logits = torch.randn(2, vocab)
    out = head(input_ids, logits)
    r = torch.zeros(2, vocab)
    r[0, tiny_tokenizer.eos_token_id] = 2 * 15 * 3 / 250
    r[1, tiny_tokenizer.eos_token_id] = 2 * 15 * 2 / 250
    torch.testing.assert_close(out, torch.log_softmax(logits, -1) + torch.log_softmax(r, -1))
    # renormalised, the head is the normalised product of the two distributions
    product = torch.softmax(logits, -1) * torch.softmax(r, -1)
    torch.testing.assert_close(torch.softmax(out, -1), product / product.sum(-1, keepdim=True))


class Spy(Rule):
    """Records what the head passes to rules at every step of a real `generate`."""

    weight = 0.0
    reads_history = True

    def __init__(self, tokenizer=None, **_):
        self.calls = []

    def scores(self, step, vocab_size):
        self.calls.append((step.generated.clone(), step.present("since_user_tag"), step.present("response")))
        return torch.zeros(len(step.generated), vocab_size)


def fed_tokens(model):
    """The token ids each forward pass of `model` is fed (the packed prompts, then one new column a step)."""
    fed = []
    model.register_forward_pre_hook(lambda module, args, kwargs: fed.append(kwargs["input_ids"].clone()),
                                    with_kwargs=True)
    return fed


def test_per_row_state_in_a_ragged_left_padded_kv_cached_batch(tiny_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from rt_lab.generate.decode import encode_prompt, generate_batch, generation_config
    from rt_lab.generate.loop import left_padded
    from rt_lab.data.templates import TagTemplate

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    fed = fed_tokens(model)
    prompts = [encode_prompt(text, TagTemplate(), tiny_tokenizer, "auto")
               for text in ["Hi", "Write a long and winding sentence about rivers and the sea.", "Why?"]]
    spy = Spy()
    config = generation_config(OmegaConf.create({"max_new_tokens": 12, "do_sample": False, "temperature": 1.0,
                                                 "top_p": 1.0}), tiny_tokenizer)
    generate_batch(model, tiny_tokenizer, prompts, config, [spy])
    width = max(len(p.ids) for p in prompts)
    assert [c[0].tolist() for c in spy.calls] == [[t] * 3 for t in range(len(spy.calls))]
    # the prefill is fed packed; the head sees each row left-padded to the widest prompt
    assert len(fed) == len(spy.calls) and fed[0].tolist() == [sum((p.ids for p in prompts), [])]
    padded, _ = left_padded([p.ids for p in prompts], tiny_tokenizer.pad_token_id)
    for call, (generated, since_user_tag, response) in enumerate(spy.calls):
        input_ids = torch.cat([padded, *fed[1:call + 1]], dim=1)  # what the head saw at this step
        for row, prompt in enumerate(prompts):
            instruction_start = width - len(prompt.ids) + prompt.instruction_start
            assert set(since_user_tag[row].nonzero().flatten().tolist()) == set(input_ids[row, instruction_start:].tolist())
            assert set(response[row].nonzero().flatten().tolist()) == set(input_ids[row, width:].tolist())
    assert tiny_tokenizer.decode(prompts[0].ids[prompts[0].instruction_start:]) == "Hi\n<|assistant|>\n"


def test_generation_with_all_rules_off_is_unchanged(tiny_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from rt_lab.generate.decode import encode_prompt, generate_batch, generation_config
    from rt_lab.data.templates import TagTemplate

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    prompts = [encode_prompt(text, TagTemplate(), tiny_tokenizer, "auto") for text in ["Hi", "Tell me a story."]]
    config = generation_config(OmegaConf.create({"max_new_tokens": 20, "do_sample": False, "temperature": 1.0,
                                                 "top_p": 1.0}), tiny_tokenizer)
    plain = generate_batch(model, tiny_tokenizer, prompts, config)
    spy = Spy()  # a head whose rules add nothing: r = 0, log_softmax(r) is a constant
    assert generate_batch(model, tiny_tokenizer, prompts, config, [spy]) == plain
    assert spy.calls
    with_rules = generate_batch(model, tiny_tokenizer, prompts, config,
                                build_rules(paper_rules_cfg("eos_ramp", "uniform", "diversity"), tiny_tokenizer))
    assert with_rules != plain
