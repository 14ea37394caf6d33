"""What a rater sees, from the rater's own seed: every visible item, in an order of its own, each with its two
responses in a side order of its own. Both are hashes of (seed, item id), so an item added later (a run that
finished since) takes its place without moving the others, and a reload shows the same screen."""

from __future__ import annotations

import hashlib
from typing import Iterable


def _draw(seed: int, what: str, item_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{what}:{item_id}".encode("utf-8")).digest()


def rater_order(seed: int, item_ids: Iterable[str]) -> list[str]:
    """The rater's order of the items."""
    return sorted(item_ids, key=lambda item_id: _draw(seed, "order", item_id))


def a_on_left(seed: int, item_id: str) -> bool:
    """Whether the rater sees response A first (left) on this item."""
    return _draw(seed, "side", item_id)[0] % 2 == 0
