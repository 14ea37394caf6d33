"""Optional vLLM generation backend (`generation.backend=vllm`, vLLM >= 0.32: `pip install 'rt_lab[vllm]'` on GPU
machines, vLLM's CPU build as `make test-vllm` installs it elsewhere). vLLM is imported when the backend is built,
not when this module is.

With rules enabled, the engine loads rt_lab's rule head as a custom logits processor, the one for the model runner
vLLM picks for this engine (rt_lab.generate.vllm_rule_head), and every request carries the rules config and its
instruction start in `SamplingParams.extra_args`; with none enabled no processor is passed. The model loads in
`model.dtype`, as the hf backend loads it, and responses end on the same stop tokens (rt_lab.generate.stopping).

vLLM starts its engine in child processes, which print why they failed to their own stdout and stderr; the parent
only learns that they failed. While the engine starts, what processes print passes through pipes, and the errors
printed there go into the error rt_lab raises (`PrintedLines`), so the cause reaches the run's log, not only the
terminal."""

from __future__ import annotations

import collections
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from omegaconf import OmegaConf

from rt_lab.config.generation import GenerationConfig
from rt_lab.config.root import RootConfig
from rt_lab.generate.decode import BatchGenerator, EncodedPrompt
from rt_lab.generate.rule_slots import request_args
from rt_lab.generate.rules import build_rules
from rt_lab.generate.stopping import model_generation_config, stop_token_ids
from rt_lab.train.export import is_adapter_folder

PROCESSORS = {False: "rt_lab.generate.vllm_rule_head:RuleHeadV1", True: "rt_lab.generate.vllm_rule_head:RuleHeadV2"}
PRINTED_LINES = 5000
# an exception's last traceback line, behind vLLM's log prefix if any: "(Worker pid=7) ERROR ... ValueError: why"
EXCEPTION_LINE = re.compile(r"(?:^|\] |\) )((?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception|Exit|Interrupt): .*)$")


class EngineStartError(RuntimeError):
    """vLLM's engine did not start; the message holds what its process printed."""


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError("generation.backend=vllm needs vLLM >= 0.32: pip install 'rt_lab[vllm]' (GPU machines; "
                          "on a CPU see `make test-vllm`); or use generation.backend=hf") from err
    return vllm


def engine_args(model_path: str | Path, cfg: RootConfig) -> dict[str, Any]:
    """`vllm.LLM`'s arguments for a run config, without the rule head (`with_rule_head` adds it): `generation.vllm`
    entries win over rt_lab's."""
    extra = cfg.generation.get("vllm")
    return {"model": str(model_path), "dtype": cfg.model.dtype,
            **(OmegaConf.to_container(extra, resolve=True) if extra else {})}


def with_rule_head(vllm: Any, args: dict[str, Any]) -> dict[str, Any]:
    """`args` with the rule head for the model runner vLLM will pick for them (V1 or V2)."""
    uses_v2 = vllm.EngineArgs(**args).create_engine_config().use_v2_model_runner
    return {**args, "logits_processors": [PROCESSORS[uses_v2]]}


def sampling_args(cfg: GenerationConfig, stops: Sequence[int], rules: dict[str, Any] | None,
                  prompt: EncodedPrompt) -> dict[str, Any]:
    """One request's `vllm.SamplingParams` arguments from `generation` (`cfg`): greedy is temperature 0."""
    return {"max_tokens": cfg.max_new_tokens, "min_tokens": cfg.get("min_new_tokens") or 0,
            "temperature": cfg.temperature if cfg.do_sample else 0.0, "top_p": cfg.top_p,
            "stop_token_ids": list(stops), "stop": list(cfg.get("stop") or []) or None,
            "extra_args": request_args(rules, prompt.instruction_start) if rules else None}


class PrintedLines:
    """Within the block, file descriptors 1 and 2, this process's and every child's it starts, write into pipes
    that threads copy to the real stdout and stderr, keeping the last `lines` lines of both (vLLM logs to stdout,
    tracebacks go to stderr). Children keep the pipes after the block, and the threads copy until they exit."""

    def __init__(self, lines: int = PRINTED_LINES) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=lines)
        self.saved: dict[int, int] = {}
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> "PrintedLines":
        for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
            stream.flush()
            self.saved[fd] = os.dup(fd)
            forward = os.dup(fd)  # the thread's own copy of the real stream, open after the block restores fd
            read_end, write_end = os.pipe()
            thread = threading.Thread(target=self.copy, args=(read_end, forward), name=f"vllm-fd{fd}", daemon=True)
            thread.start()
            self.threads.append(thread)
            os.dup2(write_end, fd)
            os.close(write_end)
        return self

    def copy(self, read_end: int, forward: int) -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe, os.fdopen(forward, "wb", buffering=0) as out:
            for line in iter(pipe.readline, b""):
                out.write(line)
                self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    def __exit__(self, *exc: object) -> None:
        for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
            stream.flush()
            os.dup2(self.saved[fd], fd)
            os.close(self.saved[fd])

    def errors(self, wait_s: float) -> list[str]:
        """The exceptions the processes printed ("ValueError: ..."), each once, in the order printed (the first is
        usually the cause, the rest its consequences in other processes); waits until every child holding the pipes
        has exited, or `wait_s` seconds."""
        deadline = time.monotonic() + wait_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return list(dict.fromkeys(match[1] for line in self.lines if (match := EXCEPTION_LINE.search(line))))


def start_engine(vllm: Any, args: dict[str, Any]) -> Any:
    """`vllm.LLM(**args)`; a failed start raises EngineStartError with the errors vLLM's processes printed."""
    with PrintedLines() as printed:
        try:
            return vllm.LLM(**args)
        except Exception as err:
            failure = err
    errors = printed.errors(wait_s=10) or [f"{type(failure).__name__}: {failure}"]
    raise EngineStartError("vLLM's engine did not start. Errors its processes printed, first to last (all they "
                           "printed is above):\n" + "\n".join(f"  {error}" for error in errors)) from failure


def vllm_batch_generator(model_path: str | Path, cfg: RootConfig, tokenizer: Any) -> BatchGenerator:
    """Answers batches with vLLM on the model folder `model_path`, as run config `cfg` says."""
    if is_adapter_folder(Path(model_path)):
        raise ValueError(f"{model_path} holds a peft adapter; vLLM needs a dense model: set "
                         "adapter.export=merge (LoRA) or merge_bf16 (QLoRA)")
    vllm = import_vllm()
    rules = None
    args = engine_args(model_path, cfg)
    if cfg.rules.enabled:
        build_rules(cfg.rules, tokenizer)  # a bad rules config fails here, not in vLLM's engine process
        rules = OmegaConf.to_container(cfg.rules, resolve=True)
        args = with_rule_head(vllm, args)
    stops = stop_token_ids(tokenizer, model_generation_config(model_path))
    llm = start_engine(vllm, args)

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
