"""The rule head over an engine's request slots (the vLLM backend's), step by step against the transformers head
(`RuleHead`), on the CPU: requests of different lengths come and go through a few reused slots, in a fresh row
order every step, with rule sets mixed in one batch, a chunked prefill and a preempted request that resumes."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rt_lab.data.templates import TagTemplate
from rt_lab.generate.decode import EncodedPrompt, encode_prompt
from rt_lab.generate.rule_slots import (RULES_KEY, START_KEY, SlotRuleHead, check_request_args)
from rt_lab.generate.rule_head import RuleHead
from rt_lab.generate.rules import build_rules
from rt_lab.generate.vllm_backend import engine_args, sampling_args

INSTRUCTIONS = ["Hi", "Write a long and winding sentence about rivers and the sea.", "Why?",
                "List three colors.", "Tell me a story about a cat who sails.", "Ok"]
RESPONSE_LENGTHS = [7, 1, 12, 5, 9, 4]
SLOTS = 3
MAX_LEN = 96


@dataclass
class Request:
    prompt: EncodedPrompt
    args: dict | None  # the request's SamplingParams.extra_args, as the vLLM backend builds them
    response: list[int]
    logits: torch.Tensor  # (len(response), V): the model's logits before each response token
    expected: list[torch.Tensor] = field(default_factory=list)  # RuleHead's scores at each step
    done: int = 0  # response tokens already generated
    chunked: bool = False  # its prompt reaches the engine in two chunks
    preempt_at: int | None = None  # evicted after this many tokens, then resumed from its prompt and output


def rules_config(compose, enabled, scope="since_user_tag"):
    cfg = compose(["model=tiny", f"rules.enabled=[{','.join(enabled)}]", f"rules.diversity.scope={scope}"])
    return cfg


def requests(compose, tokenizer, enabled, scope) -> list[Request]:
    """Every third request uses `enabled` rules, every third only `eos_ramp`, every third none. Responses repeat
    instruction and earlier response tokens, so every scope's token set matters."""
    configs = [rules_config(compose, enabled, scope), rules_config(compose, ["eos_ramp"]), compose(["model=tiny"])]
    rng = random.Random(0)
    torch.manual_seed(0)
    made = []
    for i, (text, length) in enumerate(zip(INSTRUCTIONS, RESPONSE_LENGTHS)):
        cfg = configs[i % 3]
        prompt = encode_prompt(text, TagTemplate(), tokenizer, "auto")
        rules = OmegaConf.to_container(cfg.rules, resolve=True) if cfg.rules.enabled else None
        args = sampling_args(cfg.generation, [tokenizer.eos_token_id], rules, prompt)["extra_args"]
        pool = prompt.ids[prompt.instruction_start:] + [rng.randrange(3, len(tokenizer)) for _ in range(4)]
        response = [rng.choice(pool) for _ in range(length)]
        request = Request(prompt, args, response, torch.randn(length, len(tokenizer)))
        if rules:
            head = RuleHead(build_rules(cfg.rules, tokenizer), torch.tensor([len(prompt.ids)]),
                            torch.tensor([prompt.instruction_start]))
            for k in range(length):
                ids = torch.tensor([prompt.ids + response[:k]])
                request.expected.append(head(ids, request.logits[k:k + 1].clone())[0])
        made.append(request)
    made[1].chunked = True
    made[4].preempt_at = 4
    return made


class Engine:
    """Drives a slot head as vLLM's Model Runner V2 drives a logits processor: a request takes a slot from a free
    list (last freed first) and leaves it to the next when it finishes; vLLM's per-slot token table keeps whatever
    the slot's last request left beyond the new one's tokens; the head is told of each admitted request, then of
    the tokens on the device, then scores each step's rows, in a new order every step."""

    def __init__(self, admit, start, apply, vocab_size: int) -> None:
        self.admit, self.start, self.apply = admit, start, apply
        self.tokens = torch.randint(0, vocab_size, (SLOTS, MAX_LEN), dtype=torch.int32)  # stale everywhere
        self.filled = np.zeros(SLOTS, dtype=np.int32)
        self.prompt_lengths = np.zeros(SLOTS, dtype=np.int32)
        self.free = list(range(SLOTS))
        self.rng = random.Random(1)
        self.checked = 0

    def run(self, queue: list[Request]) -> None:
        active: dict[int, Request] = {}
        while queue or active:
            while queue and self.free:
                request = queue.pop(0)
                slot = self.free.pop()
                sequence = request.prompt.ids + request.response[:request.done]
                self.tokens[slot, :len(sequence)] = torch.tensor(sequence, dtype=torch.int32)
                self.filled[slot], self.prompt_lengths[slot] = len(sequence), len(request.prompt.ids)
                assert self.admit(slot, request.args) == (request.args is not None)
                active[slot] = request
            self.start(self.tokens, self.filled, self.prompt_lengths)
            slots = list(active)
            self.rng.shuffle(slots)
            self.step(np.array(slots, dtype=np.int32), active)
            for slot in slots:
                request = active[slot]
                if request.done == len(request.response) or request.done == request.preempt_at:
                    del active[slot]
                    self.free.append(slot)
                    if request.done == request.preempt_at:
                        request.preempt_at = None
                        queue.append(request)

    def step(self, slots: np.ndarray, active: dict[int, Request]) -> None:
        rows = [active[slot] for slot in slots]
        partial = [r.chunked for r in rows]  # a first chunk: its row's sample is thrown away
        sequences = [r.prompt.ids + r.response[:r.done] for r in rows]
        positions = [len(r.prompt.ids) // 2 - 1 if p else len(s) - 1 for r, p, s in zip(rows, partial, sequences)]
        logits = torch.stack([torch.randn(r.logits.shape[1]) if p else r.logits[r.done]
                              for r, p in zip(rows, partial)])
        before = logits.clone()
        out = self.apply(logits, slots, torch.tensor([s[p] for s, p in zip(sequences, positions)], dtype=torch.int32),
                         torch.tensor(positions))
        for row, request in enumerate(rows):
            if partial[row]:
                request.chunked = False
                continue
            if request.args is None:
                assert torch.equal(out[row], before[row])
            else:
                torch.testing.assert_close(out[row], request.expected[request.done])
                self.checked += 1
            request.done += 1


@pytest.mark.parametrize("enabled,scope", [
    (["eos_ramp", "uniform", "diversity"], "since_user_tag"),
    (["eos_ramp", "uniform", "diversity"], "response"),
    (["diversity"], "response"),
    (["start", "uniform"], "since_user_tag"),
])
def test_slot_head_scores_as_the_transformers_head_at_every_step(compose, tiny_tokenizer, enabled, scope):
    queue = requests(compose, tiny_tokenizer, enabled, scope)
    head = SlotRuleHead(tiny_tokenizer, SLOTS, len(tiny_tokenizer), "cpu")
    engine = Engine(head.admit, head.start_admitted, head.apply, len(tiny_tokenizer))
    engine.run(list(queue))
    assert all(r.done == len(r.response) for r in queue)
    assert engine.checked == sum(len(r.response) for r in queue if r.args)
    assert len(head.rule_sets) == 2  # requests with equal rules share one built rule set


def test_request_arguments_carry_the_rules_only_when_enabled(compose, tiny_path, tiny_tokenizer):
    prompt = encode_prompt("Hi", TagTemplate(), tiny_tokenizer, "auto")
    plain = compose(["model=tiny"])
    assert not plain.rules.enabled
    assert sampling_args(plain.generation, [1], None, prompt)["extra_args"] is None
    ruled = compose(["model=tiny", "method=rules", "+generation.vllm.gpu_memory_utilization=0.5"])
    # the rule head joins these in the vLLM backend, for the model runner vLLM picks (tests/test_vllm.py)
    assert engine_args(tiny_path, ruled) == {"model": tiny_path, "dtype": "float32", "enforce_eager": False,
                                             "gpu_memory_utilization": 0.5}
    rules = OmegaConf.to_container(ruled.rules, resolve=True)
    args = sampling_args(ruled.generation, [1, 7], rules, prompt)
    assert args["temperature"] == 0.0 and args["stop_token_ids"] == [1, 7]
    assert args["extra_args"][RULES_KEY]["enabled"] == ["eos_ramp", "uniform", "diversity"]
    assert args["extra_args"][START_KEY] == prompt.instruction_start
    check_request_args(args["extra_args"])
    check_request_args(None)


@pytest.mark.parametrize("args,message", [
    ({RULES_KEY: {"enabled": []}, START_KEY: 3}, "enabled"),
    ({RULES_KEY: {"enabled": ["eos"]}, START_KEY: 3}, r"\['eos'\] are not registered"),
    ({RULES_KEY: {"enabled": ["eos_ramp"]}, START_KEY: -1}, "instruction's first token"),
    ({RULES_KEY: {"enabled": ["eos_ramp"]}}, "instruction's first token"),
    ({RULES_KEY: {"enabled": ["eos_ramp"]}, START_KEY: True}, "instruction's first token"),
])
def test_bad_request_arguments_are_refused_with_the_key(args, message):
    with pytest.raises(ValueError, match=message):
        check_request_args(args)


def test_a_request_moved_or_swapped_to_another_slot_keeps_its_state(compose, tiny_tokenizer):
    """The V1 runner compacts its batch: a request's state follows it to its new slot, a released slot scores
    nothing. Scores after the moves equal a head that admitted the requests in their final slots."""
    (a, b, c, *_) = requests(compose, tiny_tokenizer, ["eos_ramp", "uniform", "diversity"], "since_user_tag")
    b.args = c.args = a.args  # every one with rules
    sequence = {id(r): r.prompt.ids + r.response[:2] for r in (a, b, c)}

    def started(placement: dict[int, Request]) -> SlotRuleHead:
        head = SlotRuleHead(tiny_tokenizer, SLOTS, len(tiny_tokenizer), "cpu")
        for slot, request in placement.items():
            head.admit(slot, request.args)
        head.start_admitted_from({slot: sequence[id(r)] for slot, r in placement.items()},
                                 {slot: len(r.prompt.ids) for slot, r in placement.items()})
        return head

    moved = started({0: a, 1: b, 2: c})
    moved.release(0)  # a finished
    moved.move(2, 0, swap=False)  # c fills the hole
    moved.move(0, 1, swap=True)  # then c and b trade places
    fresh = started({0: b, 1: c})
    logits = torch.randn(3, len(tiny_tokenizer))
    tokens = torch.tensor([sequence[id(b)][-1], sequence[id(c)][-1], 0])
    positions = torch.tensor([len(sequence[id(b)]) - 1, len(sequence[id(c)]) - 1, 0])
    slots = np.array([0, 1, 2])  # b, c, and the slot the moves emptied
    out_moved = moved.apply(logits.clone(), slots, tokens, positions)
    out_fresh = fresh.apply(logits.clone(), slots, tokens, positions)
    torch.testing.assert_close(out_moved, out_fresh)
    assert not torch.equal(out_moved[:2], logits[:2]) and torch.equal(out_moved[2], logits[2])  # slot 2: empty
