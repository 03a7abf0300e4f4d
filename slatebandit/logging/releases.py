"""What a release reads and writes: canaries, their running figures, and the per-slot reward
of each slate that a canary or a watch counts."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from slatebandit.logging.learning import due_heads
from slatebandit.logging.objective import SlotReward
from slatebandit.logging.schema import canaries, decisions, rewards, slots


@dataclass(frozen=True)
class Canary:
    id: int
    version: int
    champion: int
    share: float
    started_at: float
    first_decision: int
    status: str
    ended_at: float | None
    counted_through: int
    stats: dict[str, Any]
    watch: str | None
    watch_from: int | None
    watch_through: int | None
    watch_stats: dict[str, Any] | None

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _canary(row: Any) -> Canary:
    return Canary(**{k: row._mapping[k] for k in Canary.__dataclass_fields__})


def running_canary(conn: Connection) -> Canary | None:
    row = conn.execute(
        select(canaries).where(canaries.c.status == "running").order_by(canaries.c.id.desc())
    ).first()
    return None if row is None else _canary(row)


def watched_canary(conn: Connection) -> Canary | None:
    """The promoted canary whose version is being watched, if any."""
    row = conn.execute(
        select(canaries).where(canaries.c.watch == "watching").order_by(canaries.c.id.desc())
    ).first()
    return None if row is None else _canary(row)


def list_canaries(conn: Connection, limit: int | None = None) -> list[Canary]:
    rows = conn.execute(select(canaries).order_by(canaries.c.id.desc()).limit(limit)).all()
    return [_canary(row) for row in rows]


def last_decision_id(conn: Connection) -> int:
    return int(conn.execute(select(func.max(decisions.c.id))).scalar() or 0)


def start_canary(conn: Connection, version: int, champion: int, share: float) -> int:
    first = last_decision_id(conn)
    return int(
        conn.execute(
            insert(canaries)
            .values(
                version=version,
                champion=champion,
                share=share,
                started_at=time.time(),
                first_decision=first,
                status="running",
                counted_through=first,
                stats={},
            )
            .returning(canaries.c.id)
        ).scalar_one()
    )


def update_canary(conn: Connection, canary_id: int, **values: Any) -> None:
    conn.execute(update(canaries).where(canaries.c.id == canary_id).values(**values))


@dataclass(frozen=True)
class SlateReward:
    decision_id: int
    arm: str | None
    experiment: str | None
    model_version: int
    reward: float  # the slate's mean reward per shown slot


def slate_rewards(
    conn: Connection,
    after: int,
    until: float,
    limit: int,
    reward: SlotReward,
) -> tuple[list[SlateReward], int]:
    """The decisions after id ``after`` made by ``until`` (an unbroken run of ids, as the
    learner takes them), each with its per-slot reward: its shown slots' rewards (made by
    ``reward``, the learner's objective), averaged over its slots; and the last id read
    (``after`` if none)."""
    taken = due_heads(
        conn,
        after,
        until,
        limit,
        decisions.c.arm,
        decisions.c.experiment,
        decisions.c.model_version,
    )
    if not taken:
        return [], after
    first, last = taken[0].id, taken[-1].id
    shown: dict[int, list[int]] = defaultdict(list)
    for row in conn.execute(
        select(slots.c.decision_id, slots.c.item_key).where(
            slots.c.decision_id > first - 1, slots.c.decision_id <= last
        )
    ):
        shown[row.decision_id].append(row.item_key)
    got: dict[tuple[int, int], list[float]] = defaultdict(list)
    for stored in conn.execute(
        select(rewards.c.decision_id, rewards.c.item_key, reward.column().label("figure"))
        .where(rewards.c.decision_id > first - 1, rewards.c.decision_id <= last)
        .order_by(rewards.c.id)
    ):
        got[(stored.decision_id, stored.item_key)].append(stored.figure)
    out = []
    for head in taken:
        keys = shown.get(head.id, [])
        if not keys:
            continue  # nothing shown: nothing to learn or compare
        total = sum(reward.of(got.get((head.id, key), [])) for key in keys)
        out.append(
            SlateReward(head.id, head.arm, head.experiment, head.model_version, total / len(keys))
        )
    return out, last
