"""The one schema every dataset normalises to: an id and a list of role-tagged messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")


class RowError(ValueError):
    """A malformed training row; the message names its source and row."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Row:
    id: str
    messages: tuple[Message, ...]


def make_row(row_id: Any, messages: Any, where: str) -> Row:
    """Validate and build a Row; `where` ("file.jsonl line 7") is put in every error."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise RowError(f"{where}: 'messages' must be a non-empty list, got {messages!r:.80}")
    built = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict) and not isinstance(message, Message):
            raise RowError(f"{where}: message {position} is not an object")
        role = message.role if isinstance(message, Message) else message.get("role")
        content = message.content if isinstance(message, Message) else message.get("content")
        if role not in ROLES:
            raise RowError(f"{where}: message {position} has role {role!r}; expected one of {ROLES}")
        if not isinstance(content, str):
            raise RowError(f"{where}: message {position} ({role}) has non-text content {content!r:.80}")
        built.append(Message(role, content))
    if not any(m.role == "assistant" and m.content.strip() for m in built):
        raise RowError(f"{where}: no non-empty assistant message, so nothing to train on")
    if any(m.role == "system" for m in built[1:]):
        raise RowError(f"{where}: a system message may only come first")
    return Row(id=str(row_id), messages=tuple(built))
