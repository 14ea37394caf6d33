"""rt_lab's rule head as a vLLM Model Runner V2 custom logits processor (vLLM >= 0.32), a thin adapter over
`SlotRuleHead`. vLLM imports it by name (rt_lab.generate.vllm_backend.PROCESSOR) in its engine process when rules
are enabled; importing it needs vLLM."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from vllm import SamplingParams
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor

from rt_lab.generate.rule_slots import SlotRuleHead, check_request_args

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext, LogitsProcRequestState


class RuleHeadProcessor(LogitsProcessor):
    """Scores the requests whose `SamplingParams.extra_args` carry rt_lab rules (rule_slots.request_args); others
    pass untouched."""

    def __init__(self, vllm_config: "VllmConfig", req_states: "LogitsProcRequestState") -> None:
        from transformers import AutoTokenizer

        if vllm_config.speculative_config is not None:
            # draft rows would need the head's state per draft token; the rules were never checked that way
            raise ValueError("rt_lab's rule head does not run with speculative decoding; drop "
                             "speculative_config from generation.vllm")
        model = vllm_config.model_config
        tokenizer = AutoTokenizer.from_pretrained(model.tokenizer, revision=model.tokenizer_revision,
                                                  trust_remote_code=False)
        self.req_states = req_states
        self.head = SlotRuleHead(tokenizer, req_states.max_num_reqs, req_states.vocab_size, req_states.device)

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
