"""Traffic over time, from the log: slates, shown items and clicks per time bucket by policy and
arm, and rewards by arrival. What the console's overview charts (``GET /v1/stats``).

Every query starts from the decisions made since ``since`` (their ``created_at`` is indexed)
and reaches slots and rewards through the decision id (indexed by both), so its cost follows
the window, not the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Integer, cast, func, select
from sqlalchemy.sql import ColumnElement

from slatebandit.logging.schema import decisions, rewards, slots


@dataclass(frozen=True)
class Bucket:
    start: float  # the bucket's first second (a multiple of the step)
    policy: str
    arm: str  # an experiment's arm, ``canary``, or "" (the default policy)
    slates: int
    shown: int  # items shown
    clicks: int  # click rewards on them

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _bucket(conn: Connection, column: Any, step: int) -> ColumnElement[Any]:
    """The bucket number of ``column`` (seconds): floor(column / step), in either dialect."""
    if conn.dialect.name == "sqlite":  # a cast truncates, which is floor for times after 1970
        return cast(column / step, Integer)
    return func.floor(column / step)


def traffic(conn: Connection, since: float, step: int) -> list[Bucket]:
    """Per ``step`` seconds since ``since``, per policy and arm: slates, items shown, clicks."""
    bucket = _bucket(conn, decisions.c.created_at, step).label("bucket")
    arm = func.coalesce(decisions.c.arm, "").label("arm")
    window = decisions.c.created_at >= since
    keys = (bucket, decisions.c.policy, arm)
    counted: dict[tuple[int, str, str], list[int]] = {}

    def add(rows: Any, at: int) -> None:
        for b, policy, a, n in rows:
            counted.setdefault((int(b), policy, a), [0, 0, 0])[at] = int(n)

    add(conn.execute(select(*keys, func.count()).where(window).group_by(*keys)), 0)
    joined = decisions.join(slots, slots.c.decision_id == decisions.c.id)
    add(
        conn.execute(select(*keys, func.count()).select_from(joined).where(window).group_by(*keys)),
        1,
    )
    clicked = decisions.join(rewards, rewards.c.decision_id == decisions.c.id)
    add(
        conn.execute(
            select(*keys, func.count())
            .select_from(clicked)
            .where(window, rewards.c.type == "click")
            .group_by(*keys)
        ),
        2,
    )
    return [
        Bucket(float(b * step), policy, a, *counts)
        for (b, policy, a), counts in sorted(counted.items())
    ]


def reward_arrivals(conn: Connection, since: float, step: int) -> list[tuple[float, int]]:
    """Rewards per ``step`` seconds by arrival since ``since``, on decisions from the lowest id
    made since then (ids follow commits, not clocks: group commits of several workers and a
    shipped spool interleave them, so the earliest decision need not hold the lowest id)."""
    first = conn.execute(
        select(func.min(decisions.c.id)).where(decisions.c.created_at >= since)
    ).scalar()
    if first is None:
        return []
    bucket = _bucket(conn, rewards.c.created_at, step).label("bucket")
    rows = conn.execute(
        select(bucket, func.count())
        .where(rewards.c.decision_id >= first, rewards.c.created_at >= since)
        .group_by(bucket)
        .order_by(bucket)
    )
    return [(float(int(b) * step), int(n)) for b, n in rows]
