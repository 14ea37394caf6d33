"""Generation backends: `generation.backend` names the one that answers a run's prompts. A backend builds the
run's `BatchGenerator` from the run's model; add one with `@register_backend("name")`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rt_lab.config.root import RootConfig
from rt_lab.generate.decode import BatchGenerator, finish_output, hf_batch_generator
from rt_lab.generate.rules import build_rules
from rt_lab.registry import Registry

BACKENDS = Registry("generation backend")
register_backend = BACKENDS.register


class RunModel:
    """The model a run answers and is evaluated with: its folder (what engines such as vLLM load) and its
    Hugging Face model, loaded on first use only, in eval mode."""

    def __init__(self, path: str | Path, load: Callable[[], Any]) -> None:
        self.path = path
        self._load = load
        self._model: Any = None

    def __call__(self) -> Any:
        if self._model is None:
            self._model = self._load().eval()
        return self._model


@register_backend("hf")
def hf_backend(cfg: RootConfig, tokenizer: Any, model: RunModel) -> BatchGenerator:
    """In-process transformers model, decoded by rt_lab.generate.loop with the rule head."""
    return hf_batch_generator(model(), tokenizer, cfg.generation, build_rules(cfg.rules, tokenizer))


@register_backend("vllm")
def vllm_backend(cfg: RootConfig, tokenizer: Any, model: RunModel) -> BatchGenerator:
    """vLLM on the model folder (GPU machines); the HF model is never loaded for generation."""
    from rt_lab.generate.vllm_backend import vllm_batch_generator

    return vllm_batch_generator(model.path, cfg, tokenizer)


def make_generator(cfg: RootConfig, tokenizer: Any, model: RunModel) -> BatchGenerator:
    """The run's generator, from `generation.backend`, its outputs finished as `generation.stop` and
    `generation.strip` say."""
    answer = BACKENDS.lookup(cfg.generation.get("backend", "hf"), "generation.backend")(cfg, tokenizer, model)
    stop, strip = list(cfg.generation.get("stop") or []), cfg.generation.get("strip")
    if not stop and strip is None:
        return answer
    return lambda prompts: ((index, finish_output(text, stop, strip)) for index, text in answer(prompts))
