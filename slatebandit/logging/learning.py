"""What the learner reads and writes: due decisions with their slots and rewards, item
revisions, the learner lease, and late rewards."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ColumnElement

from slatebandit.logging.records import DecisionPayload, unpack
from slatebandit.logging.schema import (
    decisions,
    item_revisions,
    leases,
    rewards,
    slots,
)


@dataclass(frozen=True)
class DueDecision:
    decision_id: int
    payload: DecisionPayload
    slots: list[tuple[int, int, float]]  # (slot, item_key, propensity)
    rewards: dict[int, list[float]]  # item_key -> each reward's figure, in arrival order


def due_heads(
    conn: Connection, after: int, until: float, limit: int, *columns: Any
) -> list[Row[Any]]:
    """``id`` and ``columns`` of the decisions after id ``after``, in id order, up to the first
    one made after ``until``.

    Progress kept as an id (the learner's, a canary's) must take decisions as an unbroken run
    of ids: a decision whose clock reads a little later than the next id's must not be
    passed over.
    """
    heads = conn.execute(
        select(decisions.c.id, decisions.c.created_at, *columns)
        .where(decisions.c.id > after)
        .order_by(decisions.c.id)
        .limit(limit)
    ).all()
    taken = []
    for head in heads:
        if head.created_at > until:
            break
        taken.append(head)
    return taken


def due_decisions(
    conn: Connection,
    after: int,
    until: float,
    limit: int,
    figure: ColumnElement[Any] = rewards.c.reward,
) -> list[DueDecision]:
    """The decisions after id ``after``, in id order, up to the first one made after ``until``
    (``due_heads``), with their shown slots and their rewards' ``figure`` (the objective's:
    ``logging.objective.SlotReward.column``)."""
    ids = [head.id for head in due_heads(conn, after, until, limit)]
    if not ids:
        return []
    rows = conn.execute(
        select(decisions.c.id, decisions.c.payload)
        .where(decisions.c.id.in_(ids))
        .order_by(decisions.c.id)
    ).all()
    shown: dict[int, list[tuple[int, int, float]]] = defaultdict(list)
    for row in conn.execute(
        select(slots.c.decision_id, slots.c.slot, slots.c.item_key, slots.c.propensity)
        .where(slots.c.decision_id.in_(ids))
        .order_by(slots.c.decision_id, slots.c.slot)
    ):
        shown[row.decision_id].append((row.slot, row.item_key, row.propensity))
    got: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for reward in conn.execute(
        select(rewards.c.decision_id, rewards.c.item_key, figure.label("figure"))
        .where(rewards.c.decision_id.in_(ids))
        .order_by(rewards.c.id)
    ):
        got[reward.decision_id][reward.item_key].append(reward.figure)
    return [
        DueDecision(row.id, DecisionPayload.decode(row.payload), shown[row.id], got[row.id])
        for row in rows
    ]


def slot_reward(got: Sequence[float], aggregation: str, default: float) -> float:
    """A shown slot's reward from the rewards stored for it, in arrival order: their sum, their
    average (Personalizer loops only) or the earliest (``SLATEBANDIT_REWARD_AGGREGATION``), or
    ``default`` when none came."""
    if not got:
        return default
    if aggregation == "sum":
        return float(sum(got))
    return float(sum(got)) / len(got) if aggregation == "average" else float(got[0])


def revision_snapshots(conn: Connection, revs: Sequence[int]) -> dict[int, tuple[int, dict]]:  # type: ignore[type-arg]
    """rev -> (item key, snapshot fields) for the given item revisions."""
    out = {}
    for start in range(0, len(revs), 500):
        chunk = list(revs[start : start + 500])
        for row in conn.execute(
            select(item_revisions.c.rev, item_revisions.c.key, item_revisions.c.snapshot).where(
                item_revisions.c.rev.in_(chunk)
            )
        ):
            out[row.rev] = (row.key, unpack(row.snapshot))
    return out


RENEW_AFTER = 1 / 3  # of a lease's time: a holder renews once this much of it has passed


def take_lease(conn: Connection, name: str, holder: str, now: float, ttl: float) -> bool:
    """Take or renew lease ``name`` for ``holder``; False while someone else holds it.

    It reads first, and writes only to take a lease that is free or expired, or to renew one
    that has run a third of its time. Every process asks every second, and on SQLite each
    write waits for the one write lock: four such writes a second kept the serving workers'
    group commits, and so their slates, waiting behind them (benchmarks/soak.py)."""
    held = conn.execute(
        select(leases.c.holder, leases.c.expires_at).where(leases.c.name == name)
    ).first()
    if held is not None and held.expires_at >= now:
        if held.holder != holder:
            return False
        if held.expires_at - now > ttl * (1 - RENEW_AFTER):
            return True
    taken = conn.execute(
        update(leases)
        .where(leases.c.name == name, or_(leases.c.holder == holder, leases.c.expires_at < now))
        .values(holder=holder, expires_at=now + ttl)
    ).rowcount
    if taken:
        return True
    try:
        with conn.begin_nested():
            conn.execute(insert(leases).values(name=name, holder=holder, expires_at=now + ttl))
    except IntegrityError:
        return False  # held by another, and not expired
    return True


def release_lease(conn: Connection, name: str, holder: str) -> None:
    conn.execute(
        update(leases)
        .where(leases.c.name == name, leases.c.holder == holder)
        .values(expires_at=0.0)
    )


# A reward is late if some checkpoint that learned its decision was made before it. The
# checkpoints that learned decision d are those with learned_through >= d; the earliest of them
# is a step function of d, constant between two consecutive learned_through values. So: one
# range join of rewards on those steps (indexed by decision id), not a scan of every version
# for every reward (1.3 s at 225,000 decisions and 179 versions; this takes milliseconds).
_LATE_REWARDS = text(
    """
    WITH firsts AS (
        SELECT learned_through AS hi,
               MIN(MIN(created_at)) OVER (ORDER BY learned_through DESC) AS first_at
        FROM model_versions GROUP BY learned_through
    ),
    spans AS (
        SELECT LAG(hi, 1, -1) OVER (ORDER BY hi) AS lo, hi, first_at FROM firsts
    )
    SELECT count(*) FROM spans JOIN rewards
      ON rewards.decision_id > spans.lo AND rewards.decision_id <= spans.hi
     AND rewards.created_at > spans.first_at
    """
)


def late_rewards(conn: Connection) -> int:
    """Rewards stored after a checkpoint had already learned their decision."""
    return int(conn.execute(_LATE_REWARDS).scalar_one())
