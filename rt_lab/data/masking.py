"""Token labels by character offsets: a token is supervised when its first character lies in a supervised span.

Labels are -100 exactly on tokens that carry no loss. The spans come from the template (assistant turns,
each with its EOS) or cover the whole text (`loss_on=all`); tag tokens are never searched for by id."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rt_lab.registry import Registry
from rt_lab.data.rows import Row
from rt_lab.data.templates import Rendered, Template
from rt_lab.data.tokens import tokenize

log = logging.getLogger(__name__)

IGNORE = -100

LossSpans = Callable[[Rendered], tuple[tuple[int, int], ...]]
LOSS_ON = Registry("loss mask")
LOSS_ON["assistant"] = lambda rendered: rendered.assistant_spans  # IT / RT / single-task (completion_only_loss)
LOSS_ON["all"] = lambda rendered: ((0, len(rendered.text)),)  # `full` (axolotl train_on_inputs=true)


@dataclass(frozen=True)
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]

    @property
    def num_supervised(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def labels_from_spans(
    ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> list[int]:
    labels = []
    for token_id, (start, end) in zip(ids, offsets):
        inside = end > start and any(lo <= start < hi for lo, hi in spans)
        labels.append(token_id if inside else IGNORE)
    if labels:
        labels[0] = IGNORE  # nothing predicts the first token; keeps packed and unpacked counts equal
    return labels


def check_eos(ids: Sequence[int], offsets: Sequence[tuple[int, int]], rendered: Rendered, tokenizer: Any,
              row_id: str) -> None:
    """Each assistant span rendered with EOS text must end in the real EOS token, not its spelling in pieces."""
    eos_text = tokenizer.eos_token
    for lo, hi in rendered.assistant_spans:
        hi -= rendered.text[lo:hi].endswith(eos_text + "\n")  # template.eos_newline: the newline follows EOS
        if not rendered.text[lo:hi].endswith(eos_text):
            continue
        last = max((i for i, (start, _) in enumerate(offsets) if lo <= start < hi), default=None)
        if last is not None and ids[last] != tokenizer.eos_token_id:
            raise ValueError(
                f"row {row_id}: the EOS text {eos_text!r} did not tokenize to eos_token_id "
                f"{tokenizer.eos_token_id} (got {ids[last]}); this tokenizer splits special tokens in text"
            )


def encode_row(row: Row, template: Template, tokenizer: Any, loss_on: str, max_length: int,
               bos: str = "auto") -> Example | None:
    """Render, tokenize and label one row; None when truncation leaves no supervised token."""
    spans = LOSS_ON.lookup(loss_on, "method.loss_on")
    rendered = template.render(row.messages, tokenizer)
    ids, offsets = tokenize(rendered.text, tokenizer, bos)
    labels = labels_from_spans(ids, offsets, spans(rendered))
    check_eos(ids, offsets, rendered, tokenizer, row.id)
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels):
        return None
    return Example(row.id, ids, labels)


def encode_rows(rows: Sequence[Row], template: Template, tokenizer: Any, loss_on: str, max_length: int,
                bos: str = "auto") -> list[Example]:
    """Encode every row; rows left with nothing to learn are dropped and counted, and none left is an error."""
    examples, dropped = [], []
    for row in rows:
        example = encode_row(row, template, tokenizer, loss_on, max_length, bos)
        (examples.append(example) if example else dropped.append(row.id))
    if dropped:
        log.warning("dropped %d of %d rows with no supervised token after truncation to %d tokens (first ids: %s)",
                    len(dropped), len(rows), max_length, dropped[:5])
    if not examples:
        raise ValueError(f"no row keeps a supervised token at max_length={max_length}; nothing to train on")
    return examples
