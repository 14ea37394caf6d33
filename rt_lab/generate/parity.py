"""The same instructions answered by several generation backends, to check that they agree (the vLLM backend
against the hf one needs a GPU machine)."""

from __future__ import annotations

import time
from typing import Any, Sequence

from omegaconf import OmegaConf

from rt_lab.data.incontext import run_template
from rt_lab.generate.backends import make_generator
from rt_lab.generate.decode import encode_prompt, in_prompt_order
from rt_lab.models import load_tokenizer, resolve_path
from rt_lab.run import base_model
from rt_lab.train.export import free_memory


def answers_by_backend(cfg: Any, instructions: Sequence[str], backends: Sequence[str] = ("hf", "vllm"),
                       seconds: dict[str, float] | None = None) -> dict[str, list[str]]:
    """Each backend's answers to `instructions`, in order, from run config `cfg`'s untrained model with its
    template (or method=icl's prompt), rules and generation settings (`instruction_prefix` too), given to each
    backend at once. A backend's model is released before the next one starts: vLLM claims
    `gpu_memory_utilization` of the GPU when it starts, so it goes last. `seconds`, when given, receives each
    backend's time spent answering, its start-up (loading, vLLM's warm-up) left out."""
    path = resolve_path(cfg.model, cfg.paths.cache_dir)
    tokenizer = load_tokenizer(cfg.model, path)
    template = run_template(cfg)  # method=icl: its in-context prompt, as in a run
    prefix = cfg.generation.instruction_prefix
    encoded = [encode_prompt(prefix + text, template, tokenizer, cfg.model.bos) for text in instructions]
    answers = {}
    for backend in backends:
        backend_cfg = OmegaConf.merge(cfg, {"generation": {"backend": backend}})
        answer = make_generator(backend_cfg, tokenizer, base_model(backend_cfg))
        started = time.perf_counter()
        answers[backend] = in_prompt_order(answer(encoded), len(encoded))
        if seconds is not None:
            seconds[backend] = time.perf_counter() - started
        del answer
        free_memory()
    return answers
