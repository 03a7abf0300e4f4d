"""Shoppers' data: erasure of one user, and the retention purge of old records.

Erasing a user deletes their events, their online state and batch features, and the rewards
on their decisions, and redacts the decisions themselves: the user id becomes ``""`` and the
payload loses the user's features (recent categories, profile) and the request context, but
keeps what replay needs to recompute propensities (candidates, scores, layout, picks). A
model already trained on their decisions is not untrained. A hash of the erased id is kept
(``erased_users``) so that a record of theirs still waiting in a spool is dropped when shipped.

The purge deletes decisions (with their slots and rewards) and events older than a cutoff.
It never deletes the newest decision: SQLite would then hand its id out again, and the
learner, whose progress is a decision id, would take new decisions for learned ones.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from sqlalchemy import Connection, delete, func, insert, select, update

from slatebandit.logging.partitions import day_of, drop_before, first_id, is_partitioned
from slatebandit.logging.records import DecisionPayload
from slatebandit.logging.schema import (
    decisions,
    erased_users,
    events,
    rewards,
    slots,
    user_profiles,
    user_states,
)

REDACTED = ""  # the user id of an erased user's decisions


@dataclass(frozen=True)
class Erased:
    events: int
    rewards: int
    decisions: int  # redacted
    state: bool  # an online state row was deleted

    def to_dict(self) -> dict[str, int | bool]:
        return {
            "events": self.events,
            "rewards": self.rewards,
            "decisions": self.decisions,
            "state": self.state,
        }


def erase_user(conn: Connection, user_id: str) -> Erased:
    """Erase ``user_id`` (as stored: pseudonymised, if the server pseudonymises)."""
    if user_id == REDACTED:
        return Erased(0, 0, 0, False)
    user_hash = erased_hash(user_id)
    conn.execute(delete(erased_users).where(erased_users.c.user_hash == user_hash))
    conn.execute(insert(erased_users).values(user_hash=user_hash, erased_at=time.time()))
    theirs = select(decisions.c.id).where(decisions.c.user_id == user_id)
    removed_rewards = conn.execute(
        delete(rewards).where(rewards.c.decision_id.in_(theirs.scalar_subquery()))
    ).rowcount
    redacted = 0
    for decision_id, payload in conn.execute(
        select(decisions.c.id, decisions.c.payload).where(decisions.c.user_id == user_id)
    ).all():
        conn.execute(
            update(decisions)
            .where(decisions.c.id == decision_id)
            .values(user_id=REDACTED, payload=redact(bytes(payload)))
        )
        redacted += 1
    removed_events = conn.execute(delete(events).where(events.c.user_id == user_id)).rowcount
    state = conn.execute(delete(user_states).where(user_states.c.user_id == user_id)).rowcount
    conn.execute(delete(user_profiles).where(user_profiles.c.user_id == user_id))
    return Erased(removed_events, removed_rewards, redacted, bool(state))


def erased_hash(user_id: str) -> str:
    """What ``erased_users`` keeps of an erased user id."""
    return hashlib.sha256(user_id.encode()).hexdigest()


def erasures(conn: Connection, user_ids: Iterable[str]) -> dict[str, float]:
    """When each of ``user_ids`` that has been erased was last erased (one query)."""
    hashes = {erased_hash(user_id): user_id for user_id in dict.fromkeys(user_ids)}
    if not hashes:
        return {}
    found = select(erased_users.c.user_hash, erased_users.c.erased_at).where(
        erased_users.c.user_hash.in_(list(hashes))
    )
    return {hashes[user_hash]: erased_at for user_hash, erased_at in conn.execute(found)}


def redact(payload: bytes) -> bytes:
    """A decision payload without the user's features and the request context (the hour of
    day stays: it says nothing of who asked)."""
    decoded = DecisionPayload.decode(payload)
    hour = decoded.context.get("c", {}).get("hour")
    context = {"c": {} if hour is None else {"hour": hour}, "u": [], "p": []}
    return replace(decoded, context=context).encode()


@dataclass(frozen=True)
class Purged:
    decisions: int  # rows deleted (not those of dropped partitions)
    rewards: int
    events: int
    partitions: tuple[str, ...] = ()  # daily partitions dropped whole (PostgreSQL)


def purge_before(conn: Connection, cutoff: float) -> Purged:
    """Delete decisions (but the newest), their slots and rewards, and events made before
    ``cutoff`` (seconds since the epoch).

    On PostgreSQL every daily partition older than ``cutoff`` is dropped whole, and rows are
    deleted one by one only where no whole day can go: the legacy and default partitions.
    The day ``cutoff`` falls in stays until all of it is past."""
    dropped: tuple[str, ...] = ()
    old = decisions.c.created_at < cutoff
    old_events = events.c.created_at < cutoff
    if is_partitioned(conn):
        dropped = tuple(drop_before(conn, cutoff))
        whole_days = first_id(day_of(cutoff))
        old = old & (decisions.c.id < whole_days)
        old_events = old_events & (events.c.id < whole_days)
    newest = conn.execute(select(func.max(decisions.c.id))).scalar()
    if newest is not None:
        old = old & (decisions.c.id < newest)
    ids = select(decisions.c.id).where(old).scalar_subquery()
    removed_rewards = conn.execute(delete(rewards).where(rewards.c.decision_id.in_(ids))).rowcount
    conn.execute(delete(slots).where(slots.c.decision_id.in_(ids)))
    removed = conn.execute(delete(decisions).where(old)).rowcount
    removed_events = conn.execute(delete(events).where(old_events)).rowcount
    return Purged(removed, removed_rewards, removed_events, dropped)
