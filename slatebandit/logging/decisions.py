"""Writes and reads of decisions, shown slots, rewards and user events.

Writers are plain functions of a connection so the group-commit writer can run many of them in
one transaction, and the CLI can call them directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from slatebandit.logging.schema import decisions, events, rewards, slots


@dataclass(frozen=True)
class ShownSlot:
    slot: int
    item_id: str
    propensity: float
    kind: str
    source: str
    score: float


def insert_decision(
    conn: Connection,
    *,
    event_id: str,
    created_at: float,
    user_id: str,
    policy: str,
    model_version: int,
    payload: bytes,
    shown: Sequence[ShownSlot],
) -> None:
    conn.execute(
        insert(decisions).values(
            event_id=event_id,
            created_at=created_at,
            user_id=user_id,
            policy=policy,
            model_version=model_version,
            payload=payload,
        )
    )
    if shown:
        conn.execute(
            insert(slots),
            [{"event_id": event_id, **s.__dict__} for s in shown],
        )


def insert_reward(
    conn: Connection, *, event_id: str, item_id: str, type: str, reward: float, created_at: float
) -> bool:
    """Store a reward once per (event, item, type); returns False if it was already stored."""
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    statement = (
        dialect.insert(rewards)
        .values(event_id=event_id, item_id=item_id, type=type, reward=reward, created_at=created_at)
        .on_conflict_do_nothing(index_elements=["event_id", "item_id", "type"])
        .returning(rewards.c.id)  # rowcount is not reliable for DO NOTHING across drivers
    )
    return conn.execute(statement).first() is not None


def insert_event(
    conn: Connection, *, user_id: str, item_id: str, type: str, created_at: float
) -> None:
    conn.execute(
        insert(events).values(user_id=user_id, item_id=item_id, type=type, created_at=created_at)
    )


def shown_items(conn: Connection, event_id: str) -> list[str] | None:
    """Items shown by decision ``event_id``, or None if there is no such decision."""
    exists = conn.execute(
        select(decisions.c.event_id).where(decisions.c.event_id == event_id)
    ).first()
    if exists is None:
        return None
    return list(conn.execute(select(slots.c.item_id).where(slots.c.event_id == event_id)).scalars())


def recent_events(conn: Connection, user_id: str, limit: int) -> list[tuple[str, str, float]]:
    """The user's last ``limit`` events plus every purchase, oldest first."""
    latest = (
        select(events.c.id, events.c.item_id, events.c.type, events.c.created_at)
        .where(events.c.user_id == user_id)
        .order_by(events.c.id.desc())
        .limit(limit)
    )
    rows = {row.id: row for row in conn.execute(latest)}
    purchases = select(events.c.id, events.c.item_id, events.c.type, events.c.created_at).where(
        events.c.user_id == user_id, events.c.type == "purchase"
    )
    rows.update({row.id: row for row in conn.execute(purchases)})
    return [(r.item_id, r.type, r.created_at) for _, r in sorted(rows.items())]


def impression_counts(conn: Connection) -> dict[str, int]:
    return dict(conn.execute(select(slots.c.item_id, func.count()).group_by(slots.c.item_id)).all())
