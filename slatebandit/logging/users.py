"""Users' online state rows: read by every slate, updated with every event.

An update is read-modify-write inside the event's own transaction: the row is created if
missing (a no-op on conflict, so two workers racing on a new user cannot fail a batch), then
read with a row lock (PostgreSQL; SQLite has one writer at a time anyway), then written back
with its version incremented. Readers compare versions to skip decoding a state they hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite

from slatebandit.logging.schema import user_states


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
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    conn.execute(
        dialect.insert(user_states)
        .values(user_id=user_id, version=0, state=b"", updated_at=time.time())
        .on_conflict_do_nothing(index_elements=["user_id"])
    )
    row = conn.execute(
        select(user_states.c.version, user_states.c.state)
        .where(user_states.c.user_id == user_id)
        .with_for_update()
    ).one()
    state = change(bytes(row.state) or None)
    version = int(row.version) + 1
    conn.execute(
        update(user_states)
        .where(user_states.c.user_id == user_id)
        .values(version=version, state=state, updated_at=time.time())
    )
    return version, state
