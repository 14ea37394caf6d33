"""Render a conversation to text plus the character spans of each assistant turn.

Masking works on these character spans and the tokenizer's offsets, so it never depends on how a tag happens
to tokenize in context. Two renderers: plain tags (`<|user|>\\n...`, the papers' format) and the model's own
chat template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from rt_lab.data.rows import Message


@dataclass(frozen=True)
class Rendered:
    text: str
    assistant_spans: tuple[tuple[int, int], ...]  # [start, end) of each assistant turn incl. its end-of-turn text


class Template(Protocol):
    def render(self, messages: tuple[Message, ...], tokenizer: Any) -> Rendered: ...

    def prompt(self, instruction: str, tokenizer: Any) -> str: ...

    def instruction_offset(self, instruction: str, tokenizer: Any) -> int:
        """Character offset in `prompt(instruction)` where the instruction starts (just after the user tag)."""
        ...


EOS_NEWLINES = ("between", "every")


@dataclass(frozen=True)
class TagTemplate:
    """`<|user|>\\n{instruction}\\n<|assistant|>\\n{response}{eos}`; later turns follow after a newline.

    The newline after an assistant turn's EOS belongs to that turn and carries loss: `between` turns only
    (open-instruct, Hewitt et al.: each assistant message ends in EOS + newline and the text's end is stripped), or
    after `every` turn, the last too (the TULU chat template of An et al.)."""

    user_tag: str = "<|user|>\n"
    assistant_tag: str = "<|assistant|>\n"
    system_tag: str = "<|system|>\n"
    append_eos: bool = True
    strip_content: bool = True
    eos_newline: str = "between"

    def __post_init__(self) -> None:
        if self.eos_newline not in EOS_NEWLINES:
            raise ValueError(f"template.eos_newline={self.eos_newline!r}; expected one of {EOS_NEWLINES}")

    def _content(self, message: Message) -> str:
        return message.content.strip() if self.strip_content else message.content

    def render(self, messages: tuple[Message, ...], tokenizer: Any) -> Rendered:
        eos = tokenizer.eos_token if self.append_eos else ""
        if self.append_eos and not eos:
            raise ValueError("template.append_eos=true but the tokenizer has no eos_token")
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        length = 0
        for index, message in enumerate(messages):
            if message.role == "assistant":
                head = self.assistant_tag
                last = index == len(messages) - 1
                body = self._content(message) + eos + ("\n" if not last or self.eos_newline == "every" else "")
                spans.append((length + len(head), length + len(head) + len(body)))
                piece = head + body
            else:
                tag = self.user_tag if message.role == "user" else self.system_tag
                piece = tag + self._content(message) + "\n"
            parts.append(piece)
            length += len(piece)
        return Rendered("".join(parts), tuple(spans))

    def prompt(self, instruction: str, tokenizer: Any) -> str:
        content = instruction.strip() if self.strip_content else instruction
        return f"{self.user_tag}{content}\n{self.assistant_tag}"

    def instruction_offset(self, instruction: str, tokenizer: Any) -> int:
        return len(self.user_tag)


@dataclass(frozen=True)
class ChatTemplate:
    """The tokenizer's own chat template; assistant spans come from rendering growing prefixes."""

    def _apply(self, tokenizer: Any, messages: list[dict], generation_prompt: bool) -> str:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"template=chat but tokenizer {tokenizer.name_or_path!r} has no chat template")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def render(self, messages: tuple[Message, ...], tokenizer: Any) -> Rendered:
        dicts = [{"role": m.role, "content": m.content} for m in messages]
        text = self._apply(tokenizer, dicts, generation_prompt=False)
        spans = []
        for index, message in enumerate(messages):
            if message.role != "assistant":
                continue
            before = self._apply(tokenizer, dicts[:index], generation_prompt=True) if index else ""
            upto = self._apply(tokenizer, dicts[: index + 1], generation_prompt=False)
            if not (text.startswith(upto) and upto.startswith(before)):
                raise ValueError(
                    f"the chat template of {tokenizer.name_or_path!r} is not prefix-stable, so assistant turns "
                    "cannot be located by character offsets; use template=tags"
                )
            spans.append((len(before), len(upto)))
        return Rendered(text, tuple(spans))

    def prompt(self, instruction: str, tokenizer: Any) -> str:
        return self._apply(tokenizer, [{"role": "user", "content": instruction}], generation_prompt=True)

    def instruction_offset(self, instruction: str, tokenizer: Any) -> int:
        text = self.prompt(instruction, tokenizer)
        return text.rindex(instruction) if instruction else len(text)
