"""Users' online state rows: read by every slate, updated with every event.

An update is read-modify-write inside the event's own transaction: the row is created if
missing (a no-op on conflict, so two workers racing on a new user cannot fail a batch), then
read with a row lock (PostgreSQL; SQLite has one writer at a time anyway), then written back
with its version incremented. Readers compare versions to skip decoding a state they hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack
from sqlalchemy import (
    Connection,
    ScalarSelect,
    Select,
    Table,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from slatebandit.logging.engine import DIALECT_INSERT
from slatebandit.logging.schema import user_profiles, user_states


def read_user_state(conn: Connection, user_id: str) -> tuple[int, bytes] | None:
    row = conn.execute(
        select(user_states.c.version, user_states.c.state).where(user_states.c.user_id == user_id)
    ).first()
    return None if row is None else (int(row.version), bytes(row.state))


def update_user_state(
    conn: Connection, user_id: str, change: Callable[[bytes | None], bytes]
) -> tuple[int, bytes]:
    """Apply ``change`` (old state bytes, None for a new user -> new bytes) under a row lock;
    returns the new (version, bytes)."""
    now = time.time()
    # A new row's versions start from the clock, not 0: a user erased and seen again gets
    # versions no worker has cached a state under.
    conn.execute(
        _CREATE_USER[conn.dialect.name],
        {"b_user": user_id, "b_version": time.time_ns() // 1000, "b_now": now},
    )
    row = conn.execute(_LOCK_USER, {"b_user": user_id}).one()
    state = change(bytes(row.state) or None)
    version = int(row.version) + 1
    conn.execute(
        _WRITE_USER, {"b_user": user_id, "b_version": version, "b_state": state, "b_now": now}
    )
    return version, state


# Built once, as ``READ_USER``: the three statements built per call cost an event's update
# 350 to 410 us on SQLite, most of it SQLAlchemy building and keying them.
_NEW_USER = {
    "user_id": bindparam("b_user"),
    "version": bindparam("b_version"),
    "state": b"",
    "updated_at": bindparam("b_now"),
}
_CREATE_USER = {
    name: insert_into(user_states)
    .values(_NEW_USER)
    .on_conflict_do_nothing(index_elements=["user_id"])
    for name, insert_into in DIALECT_INSERT.items()
}
_LOCK_USER = (
    select(user_states.c.version, user_states.c.state)
    .where(user_states.c.user_id == bindparam("b_user"))
    .with_for_update()
)
_WRITE_USER = (
    update(user_states)
    .where(user_states.c.user_id == bindparam("b_user"))
    .values(
        version=bindparam("b_version"),
        state=bindparam("b_state"),
        updated_at=bindparam("b_now"),
    )
)


def _read_user() -> Select[Any]:
    def one(column: ColumnElement[Any], table: Table) -> ScalarSelect[Any]:
        return select(column).where(table.c.user_id == bindparam("user_id")).scalar_subquery()

    # A subquery per column descends ``user_states``' index twice; one join descending it once
    # measured the same at 10M shoppers (``benchmarks/user_state_scale.py``, "one lookup").
    return select(
        one(user_states.c.version, user_states),
        one(user_states.c.state, user_states),
        one(user_profiles.c.features, user_profiles),
    )


# Built once: SQLAlchemy builds and keys a statement made per call anew each time, which cost
# this read 138 µs against 21 µs (SQLite, benchmarks/slate_path.py's notes in its README).
READ_USER = _read_user()
UserRead = tuple[tuple[int, bytes] | None, list[str]]


def read_user(conn: Connection, user_id: str) -> UserRead:
    """The user's state (as ``read_user_state``) and batch features (as ``read_user_profile``),
    in one statement: every slate reads both."""
    return user_read(conn.execute(READ_USER, {"user_id": user_id}).one())


def user_read(row: Sequence[Any]) -> UserRead:
    """``READ_USER``'s row as (version and state bytes, or None; batch features)."""
    version, state, features = row
    found = None if version is None else (int(version), bytes(state))
    return found, [] if features is None else list(msgpack.unpackb(features, raw=False))


def read_user_profile(conn: Connection, user_id: str) -> list[str]:
    """The user's batch features as VW tokens (empty for a user the job has not seen)."""
    data = conn.execute(
        select(user_profiles.c.features).where(user_profiles.c.user_id == user_id)
    ).scalar()
    return [] if data is None else list(msgpack.unpackb(data, raw=False))


def save_user_profiles(conn: Connection, profiles: Mapping[str, Sequence[str]]) -> None:
    """Replace every user's batch features with ``profiles`` (one transaction)."""
    now = time.time()
    conn.execute(delete(user_profiles))
    rows = [
        {"user_id": user, "features": msgpack.packb(list(tokens)), "updated_at": now}
        for user, tokens in profiles.items()
    ]
    for start in range(0, len(rows), 5_000):
        conn.execute(insert(user_profiles), rows[start : start + 5_000])
