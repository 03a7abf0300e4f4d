"""Reads and writes of the Personalizer tables: loops, events, rewards, model versions and
evaluations (``schema.pz_*``). Writers are plain functions of a connection, for the
group-commit writer."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from slatebandit.logging.schema import pz_evaluations, pz_events, pz_loops, pz_models, pz_rewards


@dataclass(frozen=True)
class StoredEvent:
    id: int
    event_id: str
    created_at: float
    activated: bool
    payload: bytes
    rewards: dict[int, list[float]]  # slot -> rewards in arrival order


@dataclass(frozen=True)
class ModelVersion:
    version: int
    loop: str
    origin: str
    vw_args: str
    examples: int
    learned_through: int
    created_at: float
    compared: int
    agreed: int
    rewards: float
    agreed_rewards: float


@dataclass(frozen=True)
class StoredLoop:
    service: dict[str, Any]
    policy: dict[str, Any]
    created_at: float
    updated_at: float


def read_loop(conn: Connection, name: str) -> StoredLoop | None:
    """The loop's configuration as stored, or None for a loop never configured."""
    row = conn.execute(
        select(
            pz_loops.c.service, pz_loops.c.policy, pz_loops.c.created_at, pz_loops.c.updated_at
        ).where(pz_loops.c.name == name)
    ).first()
    return None if row is None else StoredLoop(*row)


def write_loop(
    conn: Connection, name: str, service: dict[str, Any], policy: dict[str, Any]
) -> None:
    now = time.time()
    changed = conn.execute(
        update(pz_loops)
        .where(pz_loops.c.name == name)
        .values(service=service, policy=policy, updated_at=now)
    ).rowcount
    if not changed:
        conn.execute(
            insert(pz_loops).values(
                name=name, service=service, policy=policy, created_at=now, updated_at=now
            )
        )


def lock_loop(conn: Connection, name: str) -> None:
    """Serialise model changes of one loop (a row lock on PostgreSQL; SQLite has one writer)."""
    conn.execute(select(pz_loops.c.name).where(pz_loops.c.name == name).with_for_update())


def insert_event(
    conn: Connection,
    *,
    loop: str,
    event_id: str,
    activated: bool,
    model_version: int,
    payload: bytes,
    created_at: float,
) -> int:
    return conn.execute(
        insert(pz_events)
        .values(
            loop=loop,
            event_id=event_id,
            created_at=created_at,
            activated=activated,
            model_version=model_version,
            payload=payload,
        )
        .returning(pz_events.c.id)
    ).scalar_one()


def find_event(conn: Connection, loop: str, event_id: str) -> tuple[int, bool, bytes] | None:
    """(id, activated, payload) of ``event_id`` in ``loop``, or None."""
    row = conn.execute(
        select(pz_events.c.id, pz_events.c.activated, pz_events.c.payload).where(
            pz_events.c.loop == loop, pz_events.c.event_id == event_id
        )
    ).first()
    return None if row is None else (row.id, row.activated, row.payload)


def add_rewards(conn: Connection, event: int, values: list[tuple[int, float]]) -> None:
    now = time.time()
    conn.execute(
        insert(pz_rewards),
        [
            {"event": event, "slot": slot, "value": value, "created_at": now}
            for slot, value in values
        ],
    )


def activate(conn: Connection, event: int) -> None:
    conn.execute(update(pz_events).where(pz_events.c.id == event).values(activated=True))


def events_after(
    conn: Connection,
    loop: str,
    after: int,
    *,
    until: float = float("inf"),
    since: float = 0.0,
    limit: int = 1000,
) -> list[StoredEvent]:
    """The loop's events after id ``after``, in id order, stopping at the first one made after
    ``until`` (the learner's progress is an id: see ``logging.learning.due_decisions``)."""
    rows = conn.execute(
        select(pz_events)
        .where(pz_events.c.loop == loop, pz_events.c.id > after, pz_events.c.created_at >= since)
        .order_by(pz_events.c.id)
        .limit(limit)
    ).all()
    taken = []
    for row in rows:
        if row.created_at > until:
            break
        taken.append(row)
    got: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    if taken:
        for reward in conn.execute(
            select(pz_rewards.c.event, pz_rewards.c.slot, pz_rewards.c.value)
            .where(pz_rewards.c.event.in_([row.id for row in taken]))
            .order_by(pz_rewards.c.id)
        ):
            got[reward.event][reward.slot].append(reward.value)
    return [
        StoredEvent(r.id, r.event_id, r.created_at, r.activated, r.payload, dict(got[r.id]))
        for r in taken
    ]


def last_event_id(conn: Connection, loop: str) -> int:
    found = conn.execute(select(func.max(pz_events.c.id)).where(pz_events.c.loop == loop))
    return int(found.scalar() or 0)


def log_range(conn: Connection, loop: str) -> tuple[float | None, float | None, int]:
    """The first and last event times of ``loop`` and the number of events."""
    first, last, count = conn.execute(
        select(
            func.min(pz_events.c.created_at), func.max(pz_events.c.created_at), func.count()
        ).where(pz_events.c.loop == loop)
    ).one()
    return first, last, count


def delete_events(conn: Connection, loop: str, before: float | None = None) -> int:
    """Delete the loop's events (all, or those made before ``before``) and their rewards."""
    chosen = select(pz_events.c.id).where(pz_events.c.loop == loop)
    if before is not None:
        chosen = chosen.where(pz_events.c.created_at < before)
    conn.execute(delete(pz_rewards).where(pz_rewards.c.event.in_(chosen.scalar_subquery())))
    condition = pz_events.c.loop == loop
    if before is not None:
        condition = condition & (pz_events.c.created_at < before)
    return conn.execute(delete(pz_events).where(condition)).rowcount


def save_model(
    conn: Connection,
    *,
    loop: str,
    parent: int | None,
    origin: str,
    vw_args: str,
    examples: int,
    learned_through: int,
    model: bytes,
    compared: int = 0,
    agreed: int = 0,
    rewards: float = 0.0,
    agreed_rewards: float = 0.0,
) -> int:
    return conn.execute(
        insert(pz_models)
        .values(
            loop=loop,
            parent=parent,
            origin=origin,
            vw_args=vw_args,
            examples=examples,
            learned_through=learned_through,
            created_at=time.time(),
            model=model,
            compared=compared,
            agreed=agreed,
            rewards=rewards,
            agreed_rewards=agreed_rewards,
        )
        .returning(pz_models.c.version)
    ).scalar_one()


_MODEL_COLUMNS = [c for c in pz_models.c if c.name != "model"]


def latest_model(conn: Connection, loop: str) -> ModelVersion | None:
    row = conn.execute(
        select(*_MODEL_COLUMNS)
        .where(pz_models.c.loop == loop)
        .order_by(pz_models.c.version.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return ModelVersion(
        row.version,
        row.loop,
        row.origin,
        row.vw_args,
        row.examples,
        row.learned_through,
        row.created_at,
        row.compared,
        row.agreed,
        row.rewards,
        row.agreed_rewards,
    )


def model_bytes(conn: Connection, version: int) -> bytes:
    return bytes(
        conn.execute(select(pz_models.c.model).where(pz_models.c.version == version)).scalar_one()
    )


def lineage_start(conn: Connection, loop: str) -> float | None:
    """When the serving model's lineage began: the latest reset or import, else the first."""
    starts = conn.execute(
        select(func.max(pz_models.c.created_at)).where(
            pz_models.c.loop == loop, pz_models.c.origin != "learned"
        )
    ).scalar()
    if starts is not None:
        return float(starts)
    first = conn.execute(
        select(func.min(pz_models.c.created_at)).where(pz_models.c.loop == loop)
    ).scalar()
    return None if first is None else float(first)


@dataclass(frozen=True)
class Agreement:
    """Apprentice mode since the lineage began: events compared with the baseline, how many
    the model would have imitated, and the baseline's rewards in each."""

    compared: int
    agreed: int
    rewards: float
    agreed_rewards: float
    last_at: float | None


def agreement(conn: Connection, loop: str, since: float) -> Agreement:
    """Apprentice counts summed over the loop's versions made at or after ``since``."""
    row = conn.execute(
        select(
            func.coalesce(func.sum(pz_models.c.compared), 0),
            func.coalesce(func.sum(pz_models.c.agreed), 0),
            func.coalesce(func.sum(pz_models.c.rewards), 0.0),
            func.coalesce(func.sum(pz_models.c.agreed_rewards), 0.0),
            func.max(pz_models.c.created_at),
        ).where(pz_models.c.loop == loop, pz_models.c.created_at >= since)
    ).one()
    return Agreement(int(row[0]), int(row[1]), float(row[2]), float(row[3]), row[4])


def put_evaluation(
    conn: Connection, loop: str, evaluation_id: str, request: dict[str, Any]
) -> float:
    """A running evaluation; returns its creation time, which tells this run from a later one
    of the same id."""
    created = time.time()
    conn.execute(
        insert(pz_evaluations).values(
            loop=loop,
            id=evaluation_id,
            created_at=created,
            status="running",
            request=request,
        )
    )
    return created


def finish_evaluation(
    conn: Connection,
    loop: str,
    evaluation_id: str,
    created_at: float,
    result: dict[str, Any] | None,
    error: str | None,
) -> None:
    conn.execute(
        update(pz_evaluations)
        .where(
            pz_evaluations.c.loop == loop,
            pz_evaluations.c.id == evaluation_id,
            pz_evaluations.c.created_at == created_at,
        )
        .values(status="failed" if error else "succeeded", result=result, error=error)
    )


def get_evaluations(
    conn: Connection, loop: str, evaluation_id: str | None = None, skip: int = 0, top: int = 100
) -> list[dict[str, Any]]:
    query = select(pz_evaluations).where(pz_evaluations.c.loop == loop)
    if evaluation_id is not None:
        query = query.where(pz_evaluations.c.id == evaluation_id)
    rows = conn.execute(
        query.order_by(pz_evaluations.c.created_at, pz_evaluations.c.id).offset(skip).limit(top)
    ).all()
    return [dict(row._mapping) for row in rows]


def delete_evaluation(conn: Connection, loop: str, evaluation_id: str) -> bool:
    return bool(
        conn.execute(
            delete(pz_evaluations).where(
                pz_evaluations.c.loop == loop, pz_evaluations.c.id == evaluation_id
            )
        ).rowcount
    )
