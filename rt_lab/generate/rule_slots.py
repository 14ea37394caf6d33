"""The rule head over an inference engine's request slots, as vLLM drives a logits processor.

Requests come and go; each takes a slot (a row of the engine's per-request tables, reused by later requests) and
carries its rules config and instruction start in its per-request arguments (`request_args`). The engine calls
`admit` when a request takes a slot, then starts the admitted requests from their tokens so far: from the engine's
token table on the device (`start_admitted`, vLLM's Model Runner V2) or from host token lists
(`start_admitted_from`, the V1 runner). The V1 runner also compacts its batch (`move`) and frees slots (`release`).
`apply` runs once per decoding step for the whole batch, with each row's slot, newest token and its position. The
head's state lives on the logits' device and grows by one token per row and step. Pure torch:
rt_lab.generate.vllm_rule_head adapts it to both runners, and tests run it on the CPU."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from rt_lab.generate.rule_head import RuleState, product_of_experts, rule_scores
from rt_lab.generate.rules import RULES, Rule, build_rules

RULES_KEY = "rt_lab_rules"
START_KEY = "rt_lab_instruction_start"


def request_args(rules: Mapping[str, Any], instruction_start: int) -> dict[str, Any]:
    """A request's arguments for the head: its rules config (plain containers) and where its instruction starts."""
    return {RULES_KEY: dict(rules), START_KEY: instruction_start}


def check_request_args(args: Mapping[str, Any] | None) -> None:
    """A clear error for rule arguments the head cannot use; a request without them is not the head's."""
    if not args or RULES_KEY not in args:
        return
    rules = args[RULES_KEY]
    enabled = rules.get("enabled") if isinstance(rules, Mapping) else None
    if not isinstance(enabled, (list, tuple)) or not enabled:
        raise ValueError(f"extra_args[{RULES_KEY!r}] must be a rules config whose `enabled` lists rules, "
                         f"got {rules!r}")
    unknown = [name for name in enabled if name not in RULES]
    if unknown:
        raise ValueError(f"extra_args[{RULES_KEY!r}].enabled: {unknown} are not registered rules; choose from "
                         f"{sorted(RULES)}")
    start = args.get(START_KEY)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"extra_args[{START_KEY!r}] must be the index of the instruction's first token "
                         f"(an int >= 0), got {start!r}")


def host_to_device(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """Small host integers (slots, rows, lengths) as int64 on `device`, without waiting for the device, which may
    still be running the step."""
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64))
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


class SlotRuleHead:
    """The product-of-experts rule head over `slots` request slots. Each request brings its own rules config;
    requests with equal configs share one built rule set, and each step scores every rule set's rows together."""

    def __init__(self, tokenizer: Any, slots: int, vocab_size: int, device: torch.device | str) -> None:
        self.tokenizer = tokenizer
        # requests' rules are known only as they arrive, so the token table is kept from the start
        self.state = RuleState(slots, vocab_size, device, tracks_history=True)
        self.device = self.state.response_start.device
        self.rule_sets: list[list[Rule]] = []
        self.rule_set_index: dict[str, int] = {}
        self.rule_set_of = np.full(slots, -1, dtype=np.int64)  # per slot; -1: its request has no rules
        self.admitted: dict[int, int] = {}  # slot -> instruction start, until `start_admitted`

    def admit(self, slot: int, args: Mapping[str, Any] | None) -> bool:
        """A request takes `slot`, replacing whatever request held it; whether the head scores it."""
        if not args or RULES_KEY not in args:
            self.release(slot)
            return False
        key = json.dumps(args[RULES_KEY], sort_keys=True)
        if key not in self.rule_set_index:
            self.rule_set_index[key] = len(self.rule_sets)
            self.rule_sets.append(build_rules(OmegaConf.create(args[RULES_KEY]), self.tokenizer))
        self.rule_set_of[slot] = self.rule_set_index[key]
        self.admitted[slot] = int(args[START_KEY])
        return True

    def start_admitted(self, tokens: torch.Tensor, filled: np.ndarray, prompt_lengths: np.ndarray) -> None:
        """Start the slots admitted since the last call: `tokens[slot, :filled[slot]]` is each one's sequence so far
        (its prompt, and the output it already had when a preempted request resumes), and its response begins at
        `prompt_lengths[slot]`."""
        slots, starts = self.take_admitted()
        if not slots.size:
            return
        slots_t = host_to_device(slots, self.device)
        self.start(slots_t, starts, tokens[slots_t, :int(filled[slots].max())], filled[slots], prompt_lengths[slots])

    def start_admitted_from(self, sequences: Mapping[int, Sequence[int]], prompt_lengths: Mapping[int, int]) -> None:
        """`start_admitted` from host lists: `sequences[slot]` is each admitted slot's sequence so far, its response
        beginning at `prompt_lengths[slot]`."""
        slots, starts = self.take_admitted()
        if not slots.size:
            return
        lengths = np.array([len(sequences[slot]) for slot in slots], dtype=np.int64)
        padded = np.zeros((len(slots), int(lengths.max())), dtype=np.int64)
        for row, slot in enumerate(slots):
            padded[row, :lengths[row]] = sequences[slot]
        self.start(host_to_device(slots, self.device), starts, host_to_device(padded, self.device), lengths,
                   np.array([prompt_lengths[slot] for slot in slots], dtype=np.int64))

    def take_admitted(self) -> tuple[np.ndarray, np.ndarray]:
        """The slots admitted since the last start, and their instruction starts; forgets them."""
        slots = np.fromiter(self.admitted, dtype=np.int64, count=len(self.admitted))
        starts = np.fromiter(self.admitted.values(), dtype=np.int64, count=len(self.admitted))
        self.admitted.clear()
        return slots, starts

    def start(self, slots: torch.Tensor, starts: np.ndarray, sequences: torch.Tensor, lengths: np.ndarray,
              prompt_lengths: np.ndarray) -> None:
        """Hand `slots` to their requests, whose sequences so far are the first `lengths` tokens of the rows of
        `sequences` (n, W)."""
        self.state.start(slots, host_to_device(starts, self.device), host_to_device(prompt_lengths, self.device))
        positions = torch.arange(sequences.shape[1], device=self.device).expand(len(slots), -1)
        self.state.record(slots, sequences, positions, positions < host_to_device(lengths, self.device)[:, None])

    def release(self, slot: int) -> None:
        """The request in `slot` left the batch."""
        self.rule_set_of[slot] = -1
        self.admitted.pop(slot, None)

    def move(self, source: int, target: int, swap: bool) -> None:
        """The request in slot `source` now sits in slot `target`; with `swap`, target's request sits in `source`,
        else `source` is left empty."""
        sources, targets = ([source, target], [target, source]) if swap else ([source], [target])
        self.state.copy_slots(host_to_device(np.array(sources), self.device),
                              host_to_device(np.array(targets), self.device))
        self.rule_set_of[targets] = self.rule_set_of[sources]
        if not swap:
            self.rule_set_of[source] = -1

    def apply(self, logits: torch.Tensor, slots: np.ndarray, tokens: torch.Tensor,
              positions: torch.Tensor) -> torch.Tensor:
        """One decoding step, in place: row i of `logits` (B, V) belongs to the request in `slots[i]` (host), whose
        newest token `tokens[i]` sits at `positions[i]`. Rows of requests without rules are left as they are."""
        rule_set = self.rule_set_of[slots]
        rows = np.flatnonzero(rule_set >= 0)
        if rows.size == 0:
            return logits
        rows_t = host_to_device(rows, self.device)
        self.state.record(host_to_device(slots[rows], self.device), tokens[rows_t, None],
                          positions[rows_t, None].long())
        for index in np.unique(rule_set[rows]):
            group = rows[rule_set[rows] == index]
            group_t = host_to_device(group, self.device)
            step = self.state.step(host_to_device(slots[group], self.device), positions[group_t].long())
            r = rule_scores(self.rule_sets[index], step, logits.shape[-1])
            logits[group_t] = product_of_experts(logits[group_t], r).to(logits.dtype)
        return logits
