"""Optional vLLM generation backend (`generation.backend=vllm`; GPU machines, vLLM >= 0.32:
`pip install 'rt_lab[vllm]'`). vLLM is imported when the backend is built, not when this module is.

With rules enabled, vLLM loads rt_lab's rule head as a Model Runner V2 logits processor (`PROCESSOR`) and every
request carries the rules config and its instruction start in `SamplingParams.extra_args`; with none enabled no
processor is passed. The model loads in `model.dtype`, as the hf backend loads it, and responses end on the same
stop tokens (rt_lab.generate.stopping)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

from omegaconf import OmegaConf

from rt_lab.generate.decode import BatchGenerator, EncodedPrompt
from rt_lab.generate.rule_slots import request_args
from rt_lab.generate.rules import build_rules
from rt_lab.generate.stopping import model_generation_config, stop_token_ids
from rt_lab.train.export import is_adapter_folder

PROCESSOR = "rt_lab.generate.vllm_rule_head:RuleHeadProcessor"


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError("generation.backend=vllm needs vLLM >= 0.32 (GPU machines): pip install 'rt_lab[vllm]'; "
                          "or use generation.backend=hf") from err
    return vllm


def engine_args(model_path: str | Path, cfg: Any) -> dict[str, Any]:
    """`vllm.LLM`'s arguments for a run config: the rule head only when rules are enabled; `generation.vllm`
    entries win."""
    processors = {"logits_processors": [PROCESSOR]} if cfg.rules.enabled else {}
    extra = cfg.generation.get("vllm")
    return {"model": str(model_path), "dtype": cfg.model.dtype, **processors,
            **(OmegaConf.to_container(extra, resolve=True) if extra else {})}


def sampling_args(cfg: Any, stops: Sequence[int], rules: dict[str, Any] | None,
                  prompt: EncodedPrompt) -> dict[str, Any]:
    """One request's `vllm.SamplingParams` arguments from `generation` (`cfg`): greedy is temperature 0."""
    return {"max_tokens": cfg.max_new_tokens, "min_tokens": cfg.get("min_new_tokens") or 0,
            "temperature": cfg.temperature if cfg.do_sample else 0.0, "top_p": cfg.top_p,
            "stop_token_ids": list(stops), "stop": list(cfg.get("stop") or []) or None,
            "extra_args": request_args(rules, prompt.instruction_start) if rules else None}


def vllm_batch_generator(model_path: str | Path, cfg: Any, tokenizer: Any) -> BatchGenerator:
    """Answers batches with vLLM on the model folder `model_path`, as run config `cfg` says."""
    if is_adapter_folder(Path(model_path)):
        raise ValueError(f"{model_path} holds a peft adapter; vLLM needs a dense model: set "
                         "adapter.export=merge (LoRA) or merge_bf16 (QLoRA)")
    vllm = import_vllm()
    rules = None
    if cfg.rules.enabled:
        build_rules(cfg.rules, tokenizer)  # a bad rules config fails here, not in vLLM's engine process
        rules = OmegaConf.to_container(cfg.rules, resolve=True)
    stops = stop_token_ids(tokenizer, model_generation_config(model_path))
    llm = vllm.LLM(**engine_args(model_path, cfg))

    def answer(prompts: Sequence[EncodedPrompt]) -> Iterator[tuple[int, str]]:
        # vLLM batches continuously inside each call; a call per `batch_size` prompts keeps answers reaching the
        # run's file as they are made
        size = cfg.generation.batch_size
        for first in range(0, len(prompts), size):
            chunk = prompts[first:first + size]
            sampling = [vllm.SamplingParams(**sampling_args(cfg.generation, stops, rules, p)) for p in chunk]
            outputs = llm.generate([{"prompt_token_ids": p.ids} for p in chunk], sampling, use_tqdm=False)
            yield from ((first + i, output.outputs[0].text) for i, output in enumerate(outputs))

    return answer
