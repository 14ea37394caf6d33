"""Optional vLLM generation backend (`generation.backend=vllm`, GPU machines). Imported only when asked for.

The rule head joins through vLLM's per-request logits-processor adapter: each request carries the rules config
and its instruction start in `SamplingParams.extra_args`, and `RequestRuleHead` scores it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

try:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor
except ImportError as err:  # pragma: no cover - depends on the machine
    raise ImportError(
        "generation.backend=vllm needs vLLM (GPU machines): pip install vllm; or use generation.backend=hf"
    ) from err

from rt_lab.train.export import is_adapter_folder
from rt_lab.generate.decode import BatchGenerator, EncodedPrompt
from rt_lab.generate.rules import RequestRuleHead, build_rules

RULES_KEY = "rt_lab_rules"
START_KEY = "rt_lab_instruction_start"


class RuleHeadProcessor(AdapterLogitsProcessor):
    """Builds a `RequestRuleHead` for every request that carries rt_lab rules in its extra args."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        self.tokenizer_path = vllm_config.model_config.tokenizer
        self.rules_by_config: dict[str, list] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: Any) -> RequestRuleHead | None:
        extra = params.extra_args or {}
        if RULES_KEY not in extra:
            return None
        key = json.dumps(extra[RULES_KEY], sort_keys=True)
        if key not in self.rules_by_config:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
            self.rules_by_config[key] = build_rules(OmegaConf.create(extra[RULES_KEY]), tokenizer)
        return RequestRuleHead(self.rules_by_config[key], extra[START_KEY])


def vllm_batch_generator(model_path: str | Path, cfg: Any, rules_cfg: Any) -> BatchGenerator:
    if is_adapter_folder(Path(model_path)):
        raise ValueError(f"{model_path} holds a peft adapter; vLLM needs a dense model: set "
                         "adapter.export=merge (LoRA) or merge_bf16 (QLoRA)")
    llm = LLM(model=str(model_path), logits_processors=[RuleHeadProcessor], **(cfg.get("vllm") or {}))
    rules = OmegaConf.to_container(rules_cfg, resolve=True) if rules_cfg.enabled else None

    def answer(batch: Sequence[EncodedPrompt]) -> list[str]:
        sampling = [SamplingParams(max_tokens=cfg.max_new_tokens, min_tokens=cfg.get("min_new_tokens") or 0,
                                   temperature=cfg.temperature if cfg.do_sample else 0.0, top_p=cfg.top_p,
                                   extra_args={RULES_KEY: rules, START_KEY: p.instruction_start} if rules else None)
                    for p in batch]
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p.ids) for p in batch], sampling, use_tqdm=False)
        return [output.outputs[0].text for output in outputs]

    return answer
