"""Opening a study for serving: its items built from the sweep and screened, its database brought up to date
(the same pairs as before, the same texts for the items already there), and its raters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rt_lab.human.moderation import Moderation, ModerationFilter, moderate
from rt_lab.human.pairing import Item, build_items
from rt_lab.human.store import Store
from rt_lab.layout import SweepDir

DEFAULT_RATERS = 3  # An et al.'s three raters


@dataclass
class Study:
    store: Store
    items: list[Item]
    verdicts: dict[str, Moderation | None]  # by item id
    notes: list[str]  # runs left out, and why


def open_study(sweep_dir: Path, pairs: Sequence[tuple[str, str]], raters: str | None = None,
               match: Sequence[str] | None = None, sample: int | None = None,
               filters: Sequence[ModerationFilter] = (), db: Path | None = None) -> Study:
    """The study of `pairs` in the sweep (rt_lab.human.pairing), its moderation applied anew, its database
    (default `<sweep>/human/ratings.sqlite`) holding every item and the raters `raters` asks for."""
    items, notes = build_items(sweep_dir, pairs, match, sample)
    if not items:
        raise ValueError(f"no items for the pairs {[f'{a}:{b}' for a, b in pairs]} in {sweep_dir}" +
                         "".join(f"\n  {note}" for note in notes))
    verdicts = {item.id: moderate(filters, item.instruction, (item.response_a, item.response_b)) for item in items}
    store = Store(db or SweepDir(sweep_dir).human_ratings)
    store.begin_study({"pairs": [f"{a}:{b}" for a, b in pairs], "match": list(match) if match else None,
                       "sample": sample})
    store.sync_items(items, verdicts)
    store.add_raters(rater_names(store, raters))
    return Study(store, items, verdicts, notes)


def rater_names(store: Store, given: str | None) -> list[str]:
    """The raters to have: `N` (rater1..rater<N>, counting those already there), NAME,NAME,..., or, when not
    given, those already there (three on the first serve)."""
    existing = [rater.name for rater in store.raters()]
    if given is None:
        given = str(DEFAULT_RATERS) if not existing else ""
    if given.isdigit():
        names, number = list(existing), 0
        while len(names) < int(given):
            number += 1
            if f"rater{number}" not in names:
                names.append(f"rater{number}")
        return names
    return [name.strip() for name in given.split(",") if name.strip()]
