"""What each training method does to a conversation before it is rendered: keep, blank or drop user turns.

`it`/`full`/`single_task` keep them; response tuning blanks their content (Hewitt et al.) or drops them
(An et al.). Where the loss falls is the separate `loss_on` choice in `rt_lab.masking`."""

from __future__ import annotations

from typing import Callable

from rt_lab.rows import Message, Row

UserTurns = Callable[[Row], Row]
USER_TURNS: dict[str, UserTurns] = {}


def register_user_turns(name: str) -> Callable[[UserTurns], UserTurns]:
    def decorator(func: UserTurns) -> UserTurns:
        USER_TURNS[name] = func
        return func

    return decorator


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
    if name not in USER_TURNS:
        raise KeyError(f"method.user_turns={name!r} is unknown; choose one of {sorted(USER_TURNS)}")
    return USER_TURNS[name]
