"""`template/`: how a conversation becomes training and prompt text (rt_lab/data/templates.py)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from rt_lab.config.checks import one_of
from rt_lab.data.templates import EOS_NEWLINES, TagTemplate


@dataclass
class TemplateConfig:
    _target_: str = MISSING
    """The template class (rt_lab.data.templates.TagTemplate or ChatTemplate)."""


@dataclass
class TagTemplateConfig(TemplateConfig):
    """The papers' plain-text tags: ordinary sub-word tokens, not added special tokens. The defaults are
    TagTemplate's own (rt_lab/data/templates.py)."""

    _target_: str = "rt_lab.data.templates.TagTemplate"
    user_tag: str = TagTemplate.user_tag
    """Opens a user turn."""
    assistant_tag: str = TagTemplate.assistant_tag
    """Opens an assistant turn; the prompt of every method ends with it."""
    system_tag: str = TagTemplate.system_tag
    """Opens a system turn."""
    append_eos: bool = TagTemplate.append_eos
    """End every assistant turn with the tokenizer's EOS (supervised)."""
    strip_content: bool = TagTemplate.strip_content
    """Strip message text of surrounding whitespace (open-instruct, Hewitt et al.); An et al. do not."""
    eos_newline: str = TagTemplate.eos_newline
    """The supervised newline after an assistant turn's EOS: between turns (open-instruct, Hewitt et al.) or after
    every turn, the last too (An et al.'s TULU template)."""

    def check(self) -> None:
        one_of("eos_newline", self.eos_newline, EOS_NEWLINES)


@dataclass
class ChatTemplateConfig(TemplateConfig):
    """The model's own chat template (tokenizer.apply_chat_template)."""

    _target_: str = "rt_lab.data.templates.ChatTemplate"


