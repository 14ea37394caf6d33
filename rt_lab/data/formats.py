"""Record formats: how one source's records become conversations. One registry serves every use: a training row
is a whole conversation (it must end in an answer), a prompt (prompt sets, safety sets) is its first user turn,
so a prompt-only format simply returns the user turn. Add one with `@register_format("name")` on `@per_record`
`record -> messages` (None: left out by the format's selection rule), or on a whole-source stream when one
example spans several records (chess)."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple

from rt_lab.data.rows import Row, RowError, make_row
from rt_lab.registry import Registry

Records = Iterable[tuple[int, dict]]


@dataclass
class LoadStats:
    """What a load read and left out and why; logged so no record disappears silently."""

    read: int = 0
    left_out: dict[str, int] = field(default_factory=dict)

    def leave_out(self, reason: str) -> None:
        self.left_out[reason] = self.left_out.get(reason, 0) + 1


class Conversation(NamedTuple):
    index: int  # the record number errors name
    id: str
    messages: list[dict]
    record: dict  # the record it came from (for a multi-record format, the one that completed it)


Format = Callable[[Records, str, LoadStats], Iterator[Conversation]]
FORMATS = Registry("record format")
register_format = FORMATS.register


def per_record(build: Callable[[dict], list[dict] | None]) -> Format:
    """Lift `record -> messages` (None = left out by the format's selection rule) to a whole-source format."""

    def stream(records: Records, source: str, stats: LoadStats) -> Iterator[Conversation]:
        for index, record in records:
            where = f"{source} row {index}"
            try:
                messages = build(record)
            except KeyError as err:
                raise RowError(f"{where}: missing field {err} for format {build.__name__!r}; fields present: "
                               f"{sorted(record)}") from err
            except (TypeError, ValueError, SyntaxError) as err:
                raise RowError(f"{where}: {type(err).__name__}: {err}") from err
            if messages is None:
                stats.leave_out(f"{build.__name__}: selection rule")
                continue
            yield Conversation(index, str(record.get("id", index)), messages, record)

    stream.__name__ = build.__name__
    return stream


def training_rows(conversations: Iterable[Conversation], source: str) -> Iterator[Row]:
    """Validated rows; a conversation without an answer is an error naming its row."""
    for conversation in conversations:
        yield make_row(conversation.id, conversation.messages, f"{source} row {conversation.index}")


def instruction_of(conversation: Conversation, source: str) -> str:
    """The prompt a conversation asks: its first user turn."""
    text = next((m.get("content") for m in conversation.messages if isinstance(m, dict) and m.get("role") == "user"),
                None)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{source} row {conversation.index}: empty prompt (no user text)")
    return text


def turn(instruction: str, response: str | None = None) -> list[dict]:
    user = [{"role": "user", "content": instruction}]
    return user if response is None else user + [{"role": "assistant", "content": response}]


def joined(instruction: str, extra: str | None) -> str:
    """Alpaca/Dolly convention: an input or context follows the instruction after a blank line."""
    return f"{instruction}\n\n{extra}" if extra else instruction


# --- training data: instruction and answer ----------------------------------------------------------------------


def register_columns(name: str, instruction: str, answer: str | None = None, extra: str | None = None) -> None:
    """A format that reads columns: the `instruction` column (+ the `extra` input or context column after a blank
    line, the Alpaca/Dolly convention) and, for training data, the `answer` column."""

    def build(record: dict) -> list[dict]:
        text = joined(record[instruction], record.get(extra) if extra else None)
        return turn(text, record[answer] if answer else None)

    build.__name__ = name  # errors and load stats name the format
    FORMATS[name] = per_record(build)


register_columns("alpaca", "instruction", "output", extra="input")
register_columns("dolly", "instruction", "response", extra="context")
register_columns("gsm8k", "question", "answer")
register_columns("mbpp", "text", "code")
register_columns("instruction", "instruction", extra="input")  # prompt sets
register_columns("prompt", "prompt")  # safety sets
register_columns("advbench", "goal")


@register_format("messages")
@per_record
def messages(record: dict) -> list[dict]:
    return record["messages"]


@register_format("lima_conversations")
@per_record
def lima_conversations(record: dict) -> list[dict]:
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(record["conversations"])]


@register_format("poetry")
@per_record
def poetry(record: dict) -> list[dict] | None:
    if record["poem name"] is None:  # H keeps named poems only (571 of the split)
        return None
    return turn("Write a poem called " + record["poem name"], record["content"])


@register_format("recipes")
@per_record
def recipes(record: dict) -> list[dict]:
    ingredients = ast.literal_eval(record["Cleaned_Ingredients"])
    bullets = "".join(" - " + item + "\n" for item in ingredients)
    return turn("Recipe for " + record["Title"], bullets + "\n\n" + record["Instructions"])


@register_format("chess")
def chess(records: Records, source: str, stats: LoadStats) -> Iterator[Conversation]:
    """PGN text rows: a WhiteElo line and a BlackElo line, then the movetext (starting `1. `) make one game."""
    white = black = None
    for index, record in records:
        line = record["text"].strip() if isinstance(record.get("text"), str) else None
        if line is None:
            raise RowError(f"{source} row {index}: expected a text field with one PGN line")
        if line.startswith("[WhiteElo "):
            white = line
        elif line.startswith("[BlackElo "):
            black = line
        elif line.startswith("1. "):
            if white is None or black is None:
                stats.leave_out("chess: game without both Elo headers")
            else:
                yield Conversation(index, f"game-{index}", turn(white + "\n" + black + "\n", line), record)
            white = black = None


# --- prompts only (evaluation and safety sets) ------------------------------------------------------------------


def with_context(behavior: str, context: str | None) -> list[dict]:
    # HarmBench's own direct-request input for contextual behaviors, which A's harmbench eval also uses
    return turn(f"{context}\n\n---\n\n{behavior}" if context else behavior)


@register_format("harmbench")
@per_record
def harmbench(record: dict) -> list[dict]:
    return with_context(record["Behavior"], record["ContextString"])


@register_format("harmbench_hub")
@per_record
def harmbench_hub(record: dict) -> list[dict]:
    return with_context(record["prompt"], record.get("context"))
