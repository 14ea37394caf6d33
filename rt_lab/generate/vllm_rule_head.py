"""rt_lab's rule head as a vLLM custom logits processor (vLLM >= 0.32), for whichever model runner vLLM picks:
`RuleHeadV2` for Model Runner V2 (vLLM's default where Triton runs), `RuleHeadV1` for the V1 runner (CPUs, and GPUs
where Triton is missing or a feature V2 lacks is on). Both are thin adapters over one `SlotRuleHead`. vLLM imports
the one rt_lab.generate.vllm_backend names in its engine process; importing this module needs vLLM."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.sample import logits_processor as v1
from vllm.v1.worker.gpu.sample import logits_processor as v2

from rt_lab.generate.rule_slots import SlotRuleHead, check_request_args

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext, LogitsProcRequestState


def model_tokenizer(vllm_config: "VllmConfig") -> Any:
    from transformers import AutoTokenizer

    if vllm_config.speculative_config is not None:
        # draft rows would need the head's state per draft token; the rules were never checked that way
        raise ValueError("rt_lab's rule head does not run with speculative decoding; drop "
                         "speculative_config from generation.vllm")
    model = vllm_config.model_config
    return AutoTokenizer.from_pretrained(model.tokenizer, revision=model.tokenizer_revision, trust_remote_code=False)


class RuleHeadV2(v2.LogitsProcessor):
    """Model Runner V2: requests live in slots of the runner's request tables; each step names every row's slot,
    newest token and position. Requests whose `SamplingParams.extra_args` carry no rt_lab rules pass untouched."""

    def __init__(self, vllm_config: "VllmConfig", req_states: "LogitsProcRequestState") -> None:
        self.req_states = req_states
        self.head = SlotRuleHead(model_tokenizer(vllm_config), req_states.max_num_reqs, req_states.vocab_size,
                                 req_states.device)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        check_request_args(sampling_params.extra_args)

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        return self.head.admit(req_idx, sampling_params.extra_args)

    def apply_staged_writes(self) -> None:
        # runs after vLLM has put the admitted requests' tokens on the device
        self.head.start_admitted(self.req_states.all_token_ids.gpu, self.req_states.prefill_len.np,
                                 self.req_states.prompt_len.np)

    def apply(self, logits: torch.Tensor, ctx: "LogitsContext") -> torch.Tensor:
        # without speculative decoding (refused above) each request owns exactly one logits row
        return self.head.apply(logits, ctx.idx_mapping_np, ctx.input_ids, ctx.pos)


class RuleHeadV1(v1.LogitsProcessor):
    """The V1 runner: row i of each step's logits is the request at index i of its persistent batch. The runner
    reports requests added (with their prompt and a live reference to their output tokens), removed and moved
    before each step; a row's newest token and position follow from those lists."""

    def __init__(self, vllm_config: "VllmConfig", device: torch.device, is_pin_memory: bool) -> None:
        self.head = SlotRuleHead(model_tokenizer(vllm_config), vllm_config.scheduler_config.max_num_seqs,
                                 vllm_config.model_config.get_vocab_size(), device)
        self.outputs: dict[int, list[int]] = {}  # batch index -> vLLM's own, growing, list of its output tokens
        self.prompts: dict[int, list[int]] = {}

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        check_request_args(sampling_params.extra_args)

    def is_argmax_invariant(self) -> bool:
        return False  # the rules change which token greedy decoding picks

    def update_state(self, batch_update: "v1.BatchUpdate | None") -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.forget(index)
        for index, params, prompt, outputs in batch_update.added:
            self.forget(index)
            if self.head.admit(index, params.extra_args):
                self.prompts[index], self.outputs[index] = list(prompt or []), outputs
        self.head.start_admitted_from({index: self.prompts[index] + self.outputs[index] for index in self.head.admitted},
                                      {index: len(self.prompts[index]) for index in self.head.admitted})
        for source, target, direction in batch_update.moved:
            swap = direction == v1.MoveDirectionality.SWAP
            self.head.move(source, target, swap)
            for table in (self.prompts, self.outputs):
                moved, other = table.pop(source, None), table.pop(target, None)
                if moved is not None:
                    table[target] = moved
                if swap and other is not None:
                    table[source] = other

    def forget(self, index: int) -> None:
        self.head.release(index)
        self.prompts.pop(index, None)
        self.outputs.pop(index, None)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.outputs:
            return logits
        rows = len(logits)
        tokens, positions = np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64)
        for index, outputs in self.outputs.items():
            tokens[index] = outputs[-1] if outputs else self.prompts[index][-1]
            positions[index] = len(self.prompts[index]) + len(outputs) - 1
        return self.head.apply(logits, np.arange(rows), torch.from_numpy(tokens).to(logits.device),
                               torch.from_numpy(positions).to(logits.device))
