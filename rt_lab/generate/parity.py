"""The same instructions answered by several generation backends, to check that they agree and time them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from omegaconf import OmegaConf

from rt_lab.config.root import RootConfig
from rt_lab.data.incontext import run_template
from rt_lab.generate.backends import make_generator
from rt_lab.generate.decode import encode_prompt, in_prompt_order
from rt_lab.models import load_tokenizer, resolve_path
from rt_lab.run import base_model
from rt_lab.train.export import free_memory


@dataclass
class BackendTiming:
    start_s: float  # building the backend: loading the model, and vLLM's engine start-up
    answer_s: float  # answering every instruction


def answers_by_backend(cfg: RootConfig, instructions: Sequence[str], backends: Sequence[str] = ("hf", "vllm"),
                       timings: dict[str, BackendTiming] | None = None) -> dict[str, list[str]]:
    """Each backend's answers to `instructions`, in order, from run config `cfg`'s untrained model with its
    template (or method=icl's prompt), rules and generation settings (`instruction_prefix` too), given to each
    backend at once. A backend's model is released before the next one starts: vLLM claims
    `gpu_memory_utilization` of the GPU when it starts, so it goes last. `timings`, when given, receives each
    backend's start-up and answering times."""
    path = resolve_path(cfg.model, cfg.paths.cache_dir)
    tokenizer = load_tokenizer(cfg.model, path)
    template = run_template(cfg)  # method=icl: its in-context prompt, as in a run
    prefix = cfg.generation.instruction_prefix
    encoded = [encode_prompt(prefix + text, template, tokenizer, cfg.model.bos) for text in instructions]
    answers = {}
    for backend in backends:
        backend_cfg = OmegaConf.merge(cfg, {"generation": {"backend": backend}})
        started = time.perf_counter()
        answer = make_generator(backend_cfg, tokenizer, base_model(backend_cfg))
        ready = time.perf_counter()
        answers[backend] = in_prompt_order(answer(encoded), len(encoded))
        if timings is not None:
            timings[backend] = BackendTiming(ready - started, time.perf_counter() - ready)
        del answer
        free_memory()
    return answers
