"""The study's SQLite database: the items (instruction and both responses, as they were when rating began), the
raters (name, URL token, seed; a revoked rater's link opens nothing) and the ratings. Every rating is committed
before the server answers (WAL, synchronous=FULL), so neither a closed tab nor a killed server loses one; a
half-made screen is kept as a draft (`submitted_at` empty) and comes back on reload. The file is created readable
by its owner only (the tokens are in it)."""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from rt_lab.human.moderation import Moderation
from rt_lab.human.pairing import Item

ACCEPTABILITY = ("excellent", "sufficient", "not_acceptable")  # An et al.: Acceptable (Excellent / Sufficient)
PREFERENCES = ("a", "tie", "b")
RATER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS study (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    name TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE, seed INTEGER NOT NULL, created_at TEXT NOT NULL,
    revoked_at TEXT);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY, position INTEGER NOT NULL, pair TEXT NOT NULL, method_a TEXT NOT NULL,
    method_b TEXT NOT NULL, model TEXT NOT NULL, dataset TEXT NOT NULL, seed TEXT NOT NULL, setting TEXT NOT NULL,
    run_a TEXT NOT NULL, run_b TEXT NOT NULL, dir_a TEXT NOT NULL, dir_b TEXT NOT NULL, instruction TEXT NOT NULL,
    response_a TEXT NOT NULL, response_b TEXT NOT NULL,
    moderation TEXT CHECK (moderation IN ('hide', 'flag')), moderation_reason TEXT);
CREATE TABLE IF NOT EXISTS ratings (
    rater TEXT NOT NULL REFERENCES raters(name), item TEXT NOT NULL REFERENCES items(id),
    a_on_left INTEGER NOT NULL,
    rating_a TEXT CHECK (rating_a IN ('excellent', 'sufficient', 'not_acceptable')),
    rating_b TEXT CHECK (rating_b IN ('excellent', 'sufficient', 'not_acceptable')),
    preference TEXT CHECK (preference IN ('a', 'tie', 'b')),
    submitted_at TEXT, updated_at TEXT NOT NULL, revisions INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (rater, item));
"""
ITEM_COLUMNS = tuple(field.name for field in fields(Item))
SHOWN_CHARACTERS = 40  # of a refused value, in an error message


def shown(value: Any) -> str:
    """`value` for an error message: its repr, cut short (a refused form value may be megabytes long)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= SHOWN_CHARACTERS:
        return repr(text)
    return f"{text[:SHOWN_CHARACTERS]!r}... ({len(text):,} characters)"


class RatingRefused(ValueError):
    """A rating the server refuses; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Rater:
    name: str
    token: str  # the secret part of the rater's URL
    seed: int  # draws the rater's item order and side order (rt_lab.human.assignment)
    revoked: bool = False  # the link opens nothing; the ratings made stay


@dataclass(frozen=True)
class Rating:
    rating_a: str | None
    rating_b: str | None
    preference: str | None
    submitted: bool


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Store:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # created 0600 before SQLite opens it; SQLite gives its -wal and -shm files the same permissions
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        with self.connect() as db:
            db.executescript(SCHEMA)
            if "revoked_at" not in {row["name"] for row in db.execute("PRAGMA table_info(raters)")}:
                db.execute("ALTER TABLE raters ADD COLUMN revoked_at TEXT")  # a study begun before revocation

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own (one per request thread), closed after use; writes go through `write`."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the server answers
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        finally:
            db.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One transaction that holds the write lock from its first read, so checks and writes see one state."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- the study ---------------------------------------------------------------------------------------------

    def begin_study(self, settings: dict[str, Any]) -> None:
        """Record what the study rates (pairs, match keys, sample) on its first serve; a later serve must ask for
        the same, since the ratings already made are of those items."""
        with self.write() as db:
            stored = {row["key"]: json.loads(row["value"]) for row in db.execute("SELECT key, value FROM study")}
            if stored and stored != settings:
                raise ValueError(f"{self.path} is a study of {stored}; this serve asks for {settings}. Serve it "
                                 "with those settings, or start another study with --db NEW.sqlite")
            db.executemany("INSERT OR IGNORE INTO study VALUES (?, ?)",
                           [(key, json.dumps(value)) for key, value in settings.items()])

    def settings(self) -> dict[str, Any]:
        with self.connect() as db:
            return {row["key"]: json.loads(row["value"]) for row in db.execute("SELECT key, value FROM study")}

    def sync_items(self, items: Sequence[Item], verdicts: dict[str, Moderation | None]) -> None:
        """Add new items, check that those stored are unchanged, and set each item's moderation anew. An item
        whose texts changed, or that is gone from the sweep, is an error: its ratings were of other texts."""
        with self.write() as db:
            stored = {row["id"]: row for row in db.execute("SELECT * FROM items")}
            gone = sorted(set(stored) - {item.id for item in items})
            if gone:
                row = stored[gone[0]]
                raise ValueError(f"{self.path}: {len(gone)} stored items are no longer in the sweep (first: "
                                 f"{row['pair']} runs {row['dir_a']} and {row['dir_b']}, instruction "
                                 f"{row['instruction'][:60]!r}); restore those runs' outputs, or start another "
                                 "study with --db NEW.sqlite")
            position = len(stored)
            for item in items:
                verdict = verdicts.get(item.id)
                moderation = (verdict.action, verdict.reason) if verdict else (None, None)
                if item.id in stored:
                    row = stored[item.id]
                    changed = [column for column in ("instruction", "response_a", "response_b")
                               if row[column] != getattr(item, column)]
                    if changed:
                        raise ValueError(f"{self.path}: item {item.id} ({item.pair}, runs {item.dir_a} and "
                                         f"{item.dir_b}, instruction {item.instruction[:60]!r}): {changed} "
                                         "changed in the sweep since rating began; restore the outputs, or "
                                         "start another study with --db NEW.sqlite")
                    db.execute("UPDATE items SET moderation = ?, moderation_reason = ? WHERE id = ?",
                               (*moderation, item.id))
                else:
                    columns = (*ITEM_COLUMNS, "position", "moderation", "moderation_reason")
                    db.execute(f"INSERT INTO items ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                               (*(getattr(item, column) for column in ITEM_COLUMNS), position, *moderation))
                    position += 1

    def items(self) -> list[sqlite3.Row]:
        with self.connect() as db:
            return db.execute("SELECT * FROM items ORDER BY position").fetchall()

    def visible_item_ids(self) -> list[str]:
        with self.connect() as db:
            return [row["id"] for row in db.execute(
                "SELECT id FROM items WHERE moderation IS NOT 'hide' ORDER BY position")]

    def visible_item(self, item_id: str) -> sqlite3.Row | None:
        with self.connect() as db:
            return db.execute("SELECT * FROM items WHERE id = ? AND moderation IS NOT 'hide'",
                              (item_id,)).fetchone()

    # --- raters ------------------------------------------------------------------------------------------------

    def add_raters(self, names: Sequence[str]) -> None:
        """Create the raters not there yet, each with a fresh URL token and seed."""
        for name in names:
            if not RATER_NAME.fullmatch(name):
                raise ValueError(f"--raters: {name!r} is not a rater name (letters, digits, _ . -; up to 40)")
        with self.write() as db:
            known = {row["name"] for row in db.execute("SELECT name FROM raters")}
            for name in dict.fromkeys(names):
                if name not in known:
                    db.execute("INSERT INTO raters (name, token, seed, created_at) VALUES (?, ?, ?, ?)",
                               (name, secrets.token_urlsafe(12), secrets.randbits(62), _now()))

    def raters(self) -> list[Rater]:
        """Every rater, revoked ones included."""
        with self.connect() as db:
            return [self._rater(row) for row in db.execute("SELECT * FROM raters ORDER BY created_at, name")]

    def rater(self, token: str) -> Rater | None:
        """The rater whose link carries `token`; None for an unknown or revoked one."""
        with self.connect() as db:
            row = db.execute("SELECT * FROM raters WHERE token = ? AND revoked_at IS NULL", (token,)).fetchone()
        return self._rater(row) if row else None

    @staticmethod
    def _rater(row: sqlite3.Row) -> Rater:
        return Rater(row["name"], row["token"], row["seed"], row["revoked_at"] is not None)

    def rotate(self, name: str) -> Rater:
        """A new link for rater `name` (a revoked one is reinstated): the old link opens nothing from now on;
        the rater's ratings, order and sides stay."""
        with self.write() as db:
            self._known(db, name)
            db.execute("UPDATE raters SET token = ?, revoked_at = NULL WHERE name = ?",
                       (secrets.token_urlsafe(12), name))
            return self._rater(db.execute("SELECT * FROM raters WHERE name = ?", (name,)).fetchone())

    def revoke(self, name: str) -> None:
        """Rater `name`'s link opens nothing from now on (a running server included); the ratings made stay in
        the report. `rotate` gives the rater a new link."""
        with self.write() as db:
            self._known(db, name)
            db.execute("UPDATE raters SET revoked_at = ? WHERE name = ?", (_now(), name))

    def _known(self, db: sqlite3.Connection, name: str) -> None:
        names = [row["name"] for row in db.execute("SELECT name FROM raters ORDER BY created_at, name")]
        if name not in names:
            raise ValueError(f"{self.path}: no rater {shown(name)}; the study's raters: {', '.join(names)}")

    # --- ratings -----------------------------------------------------------------------------------------------

    def ratings_of(self, rater: str) -> dict[str, Rating]:
        with self.connect() as db:
            return {row["item"]: Rating(row["rating_a"], row["rating_b"], row["preference"],
                                        row["submitted_at"] is not None)
                    for row in db.execute("SELECT * FROM ratings WHERE rater = ?", (rater,))}

    def save(self, rater: Rater, item_id: str, a_on_left: bool, rating: Rating, revise: bool = False) -> str:
        """Record a rater's rating of an item: a draft (`rating.submitted` false: any field may be missing) or
        the submitted rating (all three fields). Submitting the same rating again changes nothing ("unchanged");
        a different one replaces it only when `revise` is set. Returns "saved" or "unchanged"; refusals raise
        RatingRefused with the HTTP status."""
        for value, allowed, what in ((rating.rating_a, ACCEPTABILITY, "rating"), (rating.rating_b, ACCEPTABILITY,
                                     "rating"), (rating.preference, PREFERENCES, "preference")):
            if value is not None and value not in allowed:
                raise RatingRefused(400, f"{what} {shown(value)}: expected one of {list(allowed)}")
        values = (rating.rating_a, rating.rating_b, rating.preference)
        if rating.submitted and None in values:
            raise RatingRefused(400, "rate both responses and choose the more helpful one (or a tie) to submit")
        with self.write() as db:
            if db.execute("SELECT 1 FROM items WHERE id = ? AND moderation IS NOT 'hide'",
                          (item_id,)).fetchone() is None:
                raise RatingRefused(404, f"no item {shown(item_id)} in this study")
            row = db.execute("SELECT * FROM ratings WHERE rater = ? AND item = ?", (rater.name, item_id)).fetchone()
            if row is not None and row["submitted_at"] is not None:
                if rating.submitted and values == (row["rating_a"], row["rating_b"], row["preference"]):
                    return "unchanged"
                if not (rating.submitted and revise):
                    raise RatingRefused(409, f"item {item_id} is already rated by {rater.name}; go back to it "
                                             "to revise the rating")
                db.execute("UPDATE ratings SET rating_a = ?, rating_b = ?, preference = ?, updated_at = ?, "
                           "revisions = revisions + 1 WHERE rater = ? AND item = ?",
                           (*values, _now(), rater.name, item_id))
                return "saved"
            now = _now()
            db.execute("INSERT INTO ratings (rater, item, a_on_left, rating_a, rating_b, preference, submitted_at, "
                       "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rater, item) DO UPDATE SET "
                       "rating_a = excluded.rating_a, rating_b = excluded.rating_b, "
                       "preference = excluded.preference, submitted_at = excluded.submitted_at, "
                       "updated_at = excluded.updated_at",
                       (rater.name, item_id, int(a_on_left), *values, now if rating.submitted else None, now))
            return "saved"

    def submitted(self) -> list[sqlite3.Row]:
        """Every submitted rating of a visible item, with its item's columns."""
        with self.connect() as db:
            return db.execute(
                "SELECT ratings.*, items.* FROM ratings JOIN items ON items.id = ratings.item "
                "WHERE ratings.submitted_at IS NOT NULL AND items.moderation IS NOT 'hide' "
                "ORDER BY items.position, ratings.rater").fetchall()
