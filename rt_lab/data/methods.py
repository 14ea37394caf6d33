"""What each training method does to a conversation before it is rendered: keep, blank or drop user turns.

`it`/`full`/`single_task` keep them; response tuning blanks their content (Hewitt et al.) or drops them
(An et al.). Where the loss falls is the separate `loss_on` choice in `rt_lab.data.masking`."""

from __future__ import annotations

from typing import Callable

from rt_lab.registry import Registry
from rt_lab.data.rows import Message, Row

UserTurns = Callable[[Row], Row]
USER_TURNS = Registry("user-turn transform")
register_user_turns = USER_TURNS.register


@register_user_turns("keep")
def keep(row: Row) -> Row:
    return row


@register_user_turns("blank")
def blank(row: Row) -> Row:
    """`<|user|>\\n\\n<|assistant|>\\n{response}`: the user turn stays, its content is emptied."""
    return Row(row.id, tuple(Message(m.role, "") if m.role == "user" else m for m in row.messages))


@register_user_turns("drop")
def drop(row: Row) -> Row:
    """`<|assistant|>\\n{response}`: no user turn at all."""
    return Row(row.id, tuple(m for m in row.messages if m.role != "user"))


def user_turns(name: str) -> UserTurns:
    return USER_TURNS.lookup(name, "method.user_turns")
