"""Experiments in SQL: definitions, and the per-arm sums their reports are computed from."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update

from slatebandit.logging.outcomes import outcome_sums
from slatebandit.logging.partitions import made_since
from slatebandit.logging.schema import decisions, experiments, rewards, schema_info, slots
from slatebandit.stats import Outcomes


def lock_experiments(conn: Connection) -> None:
    """Serialise experiment changes across processes until the transaction ends (PostgreSQL:
    a row lock on the schema version row; SQLite's single writer already does it)."""
    if conn.dialect.name != "sqlite":
        conn.execute(
            select(schema_info.c.value).where(schema_info.c.name == "version").with_for_update()
        )


def read_experiment(conn: Connection, name: str, *, lock: bool = False) -> Row[Any] | None:
    query = select(experiments).where(experiments.c.name == name)
    if lock and conn.dialect.name != "sqlite":  # SQLite's one writer serialises on its own
        query = query.with_for_update()
    return conn.execute(query).first()


def read_experiments(conn: Connection, status: str | None = None) -> list[Row[Any]]:
    query = select(experiments).order_by(experiments.c.created_at)
    if status is not None:
        query = query.where(experiments.c.status == status)
    return list(conn.execute(query).all())


def insert_experiment(conn: Connection, **values: Any) -> None:
    conn.execute(insert(experiments).values(**values))


def update_experiment(conn: Connection, name: str, **values: Any) -> None:
    conn.execute(update(experiments).where(experiments.c.name == name).values(**values))


def arm_sums(conn: Connection, name: str, since: float = 0.0) -> list[tuple[Any, ...]]:
    """Per arm of experiment ``name`` (created at ``since``): slates, and over slates the sums
    of impressions n, clicks c, n², c² and n·c (a click: a shown item with a positive reward).
    """
    shown = (
        select(func.count())
        .where(slots.c.decision_id == decisions.c.id)
        .scalar_subquery()
        .label("n")
    )
    clicked = (
        select(func.count(func.distinct(rewards.c.item_key)))
        .where(rewards.c.decision_id == decisions.c.id, rewards.c.reward > 0)
        .scalar_subquery()
        .label("c")
    )
    per_slate = (
        select(decisions.c.arm, shown, clicked)
        .where(decisions.c.experiment == name, made_since(decisions.c.id, since))
        .subquery()
    )
    n, c = per_slate.c.n, per_slate.c.c
    query = select(
        per_slate.c.arm,
        func.count(),
        func.sum(n),
        func.sum(c),
        func.sum(n * n),
        func.sum(c * c),
        func.sum(n * c),
    ).group_by(per_slate.c.arm)
    return [tuple(row) for row in conn.execute(query)]


def arm_outcomes(conn: Connection, name: str, since: float = 0.0) -> dict[str, Outcomes]:
    """Per arm of experiment ``name`` (created at ``since``): what its slates led to (clicks,
    purchases, revenue). ``since`` spares PostgreSQL the partitions of the days before."""
    found = outcome_sums(
        conn,
        (decisions.c.arm,),
        decisions.c.experiment == name,
        made_since(decisions.c.id, since),
    )
    return {arm: outcomes for (arm,), outcomes in found.items()}
