"""In-context alignment prompts (An et al. Tables 7/13: URIAL, URIAL-R, 0-shot): the untrained base model answers
inside a fixed text with one `{instruction}` slot, in place of the run's `template`.

`method=icl method.prompt=NAME` picks a prompt shipped in `rt_lab/incontext_prompts/` (see its README for where
each comes from), or `method.prompt=file method.prompt_file=PATH` any text file with exactly one `{instruction}`.
Nothing else in the file is interpreted (braces stay as they are). Where generation stops and how outputs are
cleaned is `generation.stop` / `generation.strip`, which method=icl sets (rt_lab.generate.decode.finish_output)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.utils import instantiate

from rt_lab.config.root import RootConfig
from rt_lab.data.rows import Message
from rt_lab.data.templates import Rendered, Template
from rt_lab.io import package_path, read_text

SLOT = "{instruction}"
SHIPPED = {name: f"pkg://incontext_prompts/{name}.txt" for name in ("urial", "urial_r", "zero_shot")}
FROM_FILE = "file"


@dataclass(frozen=True)
class InContextTemplate:
    """A prompt text with one instruction slot. It frames inference prompts only: there is no assistant turn to
    render for training or for scoring a response."""

    text: str
    source: str  # the file it came from: every error names it

    def __post_init__(self) -> None:
        if self.text.count(SLOT) != 1:
            raise ValueError(f"{self.source}: an in-context prompt needs exactly one {SLOT} slot, found "
                             f"{self.text.count(SLOT)}")

    def prompt(self, instruction: str, tokenizer: Any) -> str:
        # the instruction goes in as given (An et al. format it in unstripped)
        return self.text.replace(SLOT, instruction)

    def instruction_offset(self, instruction: str, tokenizer: Any) -> int:
        return self.text.index(SLOT)

    def render(self, messages: tuple[Message, ...], tokenizer: Any) -> Rendered:
        raise ValueError(f"method=icl frames prompts with {self.source}, which renders no conversations: training and "
                         "the evaluations that score rendered turns (eval=ranking, eval=benchmarks) need another "
                         "method")


def load_prompt(method: Any) -> InContextTemplate:
    """The prompt `method.prompt` (and `method.prompt_file`) name, read stripped as An et al. read theirs."""
    name, file = method.prompt, method.get("prompt_file")
    if name == FROM_FILE:
        if not file:
            raise ValueError("method.prompt=file needs method.prompt_file=PATH (a text with one {instruction})")
        path = package_path(str(file))
    elif name in SHIPPED:
        if file:
            raise ValueError(f"method.prompt_file={file} is set but method.prompt={name}; set method.prompt=file "
                             "to use the file")
        path = package_path(SHIPPED[name])
    else:
        raise ValueError(f"method.prompt={name!r}: choose one of {sorted(SHIPPED)} or {FROM_FILE!r} "
                         "(with method.prompt_file=PATH)")
    return InContextTemplate(read_text(path).strip(), str(path))


def run_template(cfg: RootConfig) -> Template:
    """The template a run frames its prompts with: the method's in-context prompt when it has one, else `template`.
    An in-context prompt renders no conversations, so evaluations that need that are refused before anything runs."""
    if not cfg.method.get("prompt"):
        return instantiate(cfg.template)
    scoring = [name for name in ("ranking", "benchmarks") if cfg.eval.get(name)]
    if scoring:
        raise ValueError(f"method={cfg.method.name} frames prompts in-context, but eval {scoring} scores rendered "
                         "conversations; run those evaluations with another method")
    return load_prompt(cfg.method)
