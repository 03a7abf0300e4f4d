"""Writes and reads of decisions, shown slots, rewards and user events.

Writers are plain functions of a connection so the group-commit writer can run many of them in
one transaction, and the CLI can call them directly. Items are referenced by key, decisions by
their integer id; the API's ``event_id`` and ``item_id`` are translated at the edges.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select

from slatebandit.logging.engine import DIALECT_INSERT
from slatebandit.logging.partitions import event_time, is_partitioned, made_since
from slatebandit.logging.records import payload_fields
from slatebandit.logging.schema import decisions, events, rewards, slots


@dataclass(frozen=True)
class ShownSlot:
    slot: int
    item_key: int
    propensity: float
    kind: str
    source: str
    score: float

    def row(self, decision_id: int, described: bool = True) -> tuple[object, ...]:
        """The slot's columns, in ``SLOT_COLUMNS``' order; without its kind, source and score
        unless ``described``."""
        if described:
            return (
                decision_id,
                self.slot,
                self.item_key,
                self.propensity,
                self.kind,
                self.source,
                self.score,
            )
        return (decision_id, self.slot, self.item_key, self.propensity, None, None, None)


@dataclass(frozen=True)
class ShownDecision:
    """What a reward needs to know about the decision it rewards."""

    decision_id: int
    item_keys: tuple[int, ...]
    user_id: str
    context: tuple[tuple[str, object], ...] = ()  # the request context the slate was built for


# Built once: a statement built per call is keyed for SQLAlchemy's cache anew each time (an
# event's insert took 150 to 250 us on SQLite that way).
# A reward once per (decision, item, type), by dialect; RETURNING, because rowcount is not
# reliable for DO NOTHING across drivers.
_STORE_REWARD = {
    name: insert_into(rewards)
    .on_conflict_do_nothing(index_elements=["decision_id", "item_key", "type"])
    .returning(rewards.c.id)
    for name, insert_into in DIALECT_INSERT.items()
}
_INSERT_EVENT = insert(events)
_STORE_EVENT = (
    DIALECT_INSERT["sqlite"](events)
    .on_conflict_do_nothing(index_elements=["ref"])
    .returning(events.c.id)
)


@dataclass(frozen=True)
class DecisionRecord:
    """One decision and its shown slots, as the group-commit writer stores it."""

    event_id: str
    created_at: float
    user_id: str
    policy: str
    model_version: int
    payload: bytes
    shown: tuple[ShownSlot, ...]
    experiment: str | None = None  # the A/B experiment and arm that chose the policy
    arm: str | None = None
    placement: str = "home"  # where the slate was shown (``recommender.placements``)

    @staticmethod
    def write_many(conn: Connection, records: Sequence[DecisionRecord]) -> list[ShownDecision]:
        """Insert many decisions and all their slots in a few statements.

        The writer batches records this way because per-record statements cost ~0.3 ms of
        interpreter time each, taken from the thread that serves requests.
        """
        if not records:
            return []
        if not conn.in_transaction():  # SQLAlchemy would not commit what its cursor wrote
            raise RuntimeError("decisions are written inside a transaction (engine.begin())")
        if conn.dialect.name == "sqlite":
            ids = _insert_on_sqlite(conn, records)
        else:
            ids = _insert_on_postgresql(conn, records)
        return [
            ShownDecision(decision_id, tuple(s.item_key for s in record.shown), record.user_id)
            for decision_id, record in zip(ids, records, strict=True)
        ]

    def row(self) -> tuple[object, ...]:
        """The decision's columns, in ``DECISION_COLUMNS``' order."""
        return (
            self.event_id,
            self.created_at,
            self.user_id,
            self.policy,
            self.model_version,
            self.payload,
            self.experiment,
            self.arm,
            self.placement,
        )


DECISION_COLUMNS = (
    "event_id",
    "created_at",
    "user_id",
    "policy",
    "model_version",
    "payload",
    "experiment",
    "arm",
    "placement",
)
SLOT_COLUMNS = ("decision_id", "slot", "item_key", "propensity", "kind", "source", "score")


# SQLite and PostgreSQL: the driver's own cursor, on the caller's transaction. Through
# SQLAlchemy a batch's statements cost the writer 0.15 to 0.7 ms more of CPU (1 to 16
# slates), and its ``executemany`` stepped once a slot on SQLite (psycopg sent a slot's row
# at a time too). Each step lets go of the GIL, which the group commit's thread then waits to
# take back from a busy event loop (up to the switch interval each time): against a busy
# loop, a commit of 16 slates took 0.97 s that way on SQLite (`python -m
# benchmarks.group_commit`). Here a batch is a few statements of many rows each, whatever
# its size.
PARAMETERS_A_STATEMENT = {
    "sqlite": 999,  # SQLite's limit before 3.32; it keeps the statements' text small
    "postgresql": 4_095,  # of PostgreSQL's 65,535: a few statements for the largest batches
}
_MARK = {"sqlite": "?", "postgresql": "%s"}  # the drivers' placeholders


@functools.lru_cache(maxsize=256)
def _insert_text(dialect: str, table: str, columns: tuple[str, ...], rows: int) -> str:
    one = f"({', '.join(_MARK[dialect] for _ in columns)})"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * rows)}"


def _statements(
    dialect: str, table: str, columns: tuple[str, ...], values: Sequence[object]
) -> Iterator[tuple[str, Sequence[object], int]]:
    """The statements that insert the rows whose values are ``values`` (flat, row after row):
    each one's text, its values and its number of rows."""
    width = len(columns)
    per_statement = (PARAMETERS_A_STATEMENT[dialect] // width) * width
    for start in range(0, len(values), per_statement):
        chunk = values[start : start + per_statement]
        rows = len(chunk) // width
        yield _insert_text(dialect, table, columns, rows), chunk, rows


def _sqlite_insert_rows(
    cursor: Any, table: str, columns: tuple[str, ...], values: Sequence[object]
) -> list[int]:
    """Insert the rows whose values are ``values``, flat, row after row; their rowids.

    A row's rowid is one more than the table's largest when no rowid is given, so the rows of
    one statement are numbered in turn, ending at the cursor's ``lastrowid`` (SQLite numbers
    at random only once the largest possible rowid is taken, which nothing here writes)."""
    rowids: list[int] = []
    for text, chunk, rows in _statements("sqlite", table, columns, values):
        cursor.execute(text, chunk)
        rowids.extend(range(cursor.lastrowid - rows + 1, cursor.lastrowid + 1))
    return rowids


def _insert_on_sqlite(conn: Connection, records: Sequence[DecisionRecord]) -> list[int]:
    cursor = conn.connection.cursor()
    try:
        ids = _sqlite_insert_rows(
            cursor,
            "decisions",
            DECISION_COLUMNS,
            [value for record in records for value in record.row()],
        )
        values = [
            value
            for decision_id, record in zip(ids, records, strict=True)
            for slot in record.shown
            for value in slot.row(decision_id)
        ]
        _sqlite_insert_rows(cursor, "slots", SLOT_COLUMNS, values)
    finally:
        cursor.close()
    return ids


def _insert_on_postgresql(conn: Connection, records: Sequence[DecisionRecord]) -> list[int]:
    """As on SQLite; each decision's id comes back beside its event id, which is unique, so
    the ids do not depend on the order PostgreSQL returns rows in."""
    cursor = conn.connection.cursor()
    try:
        values = [value for record in records for value in record.row()]
        id_of: dict[str, int] = {}
        for text, chunk, _ in _statements("postgresql", "decisions", DECISION_COLUMNS, values):
            cursor.execute(text + " RETURNING id, event_id", chunk)
            id_of.update((event_id, decision_id) for decision_id, event_id in cursor.fetchall())
        ids = [id_of[record.event_id] for record in records]
        # In the partitioned log a slot's kind, source and score are left NULL: the payload
        # has them (its layout, ``shown_sources`` and ``shown_scores``), and a slot row
        # without them takes 52 bytes instead of 76 (``logging.partitions``).
        described = not is_partitioned(conn)
        values = [
            value
            for decision_id, record in zip(ids, records, strict=True)
            for slot in record.shown
            for value in slot.row(decision_id, described)
        ]
        for text, chunk, _ in _statements("postgresql", "slots", SLOT_COLUMNS, values):
            cursor.execute(text, chunk)
    finally:
        cursor.close()
    return ids


def insert_reward(
    conn: Connection,
    *,
    decision_id: int,
    item_key: int,
    type: str,
    reward: float,
    created_at: float,
    value: float | None = None,
) -> bool:
    """Store a reward once per (decision, item, type); returns False if it was already stored.
    ``value``: what the action was worth in money (a purchase's amount), if the reward said."""
    values = {
        "decision_id": decision_id,
        "item_key": item_key,
        "type": type,
        "reward": reward,
        "value": value,
        "created_at": created_at,
    }
    return conn.execute(_STORE_REWARD[conn.dialect.name], values).first() is not None


def insert_event(
    conn: Connection,
    *,
    user_id: str,
    item_key: int,
    type: str,
    created_at: float,
    ref: str | None = None,
) -> bool:
    """Store a user event; returns False if one with the same ``ref`` is already stored."""
    values = {
        "user_id": user_id,
        "item_key": item_key,
        "type": type,
        "created_at": created_at,
        "ref": ref,
    }
    if is_partitioned(conn):
        # No index is unique across partitions: look first. Events with one ref are never
        # written concurrently (a spooled one ships after its own failed commit, once).
        if ref is not None and _event_stored(conn, ref):
            return False
        conn.execute(_INSERT_EVENT, values)
        return True
    return conn.execute(_STORE_EVENT, values).first() is not None


def _event_stored(conn: Connection, ref: str) -> bool:
    clause = events.c.ref == ref
    made = event_time(ref)
    if made is not None:
        clause = clause & made_since(events.c.id, made)
    return conn.execute(select(events.c.id).where(clause).limit(1)).first() is not None


def decision_ids(conn: Connection, event_ids: Sequence[str]) -> dict[str, int]:
    """The id of each decision of ``event_ids`` that is stored."""
    if not event_ids:
        return {}
    query = select(decisions.c.event_id, decisions.c.id).where(decisions.c.event_id.in_(event_ids))
    made = [event_time(event_id) for event_id in event_ids]
    known = [seconds for seconds in made if seconds is not None]
    if len(known) == len(made):  # every id says when it was made: read from that day on
        query = query.where(made_since(decisions.c.id, min(known)))
    return {event_id: decision_id for event_id, decision_id in conn.execute(query)}


def shown_decision(conn: Connection, event_id: str) -> ShownDecision | None:
    """The decision ``event_id`` and the items it showed, or None if there is none."""
    query = select(decisions.c.id, decisions.c.user_id, decisions.c.payload).where(
        decisions.c.event_id == event_id
    )
    made = event_time(event_id)
    if made is not None:  # read the partitions from the day it was made on, not all
        query = query.where(made_since(decisions.c.id, made))
    found = conn.execute(query).first()
    if found is None:
        return None
    decision_id, user_id, payload = found
    context = tuple(payload_fields(payload).get("ctx", {}).get("c", {}).items())
    keys = conn.execute(
        select(slots.c.item_key).where(slots.c.decision_id == decision_id).order_by(slots.c.slot)
    ).scalars()
    return ShownDecision(decision_id, tuple(keys), user_id, context)


def decision_user(conn: Connection, decision_id: int) -> str | None:
    """The user a decision was made for (``""`` once erased), or None if it is gone."""
    return conn.execute(select(decisions.c.user_id).where(decisions.c.id == decision_id)).scalar()


def impression_counts(conn: Connection) -> dict[int, int]:
    """Times each item has been shown, by key."""
    query = select(slots.c.item_key, func.count()).group_by(slots.c.item_key)
    return dict(conn.execute(query).all())
