"""What slates led to, summed in SQL: per group of slates (an experiment's arms; a window's
placements and policies), the sums ``stats.Outcomes`` computes CTR, conversion rate and
revenue per slate from, with their intervals.

A click is a reward of type ``click``, a conversion one of type ``purchase``, and a slate's
revenue the sum of its rewards' money ``value`` (none counts 0). Each slate's shown slots and
rewards are counted first (grouped by decision id, reached through the indexes on it), then
summed with their squares per group: one query, whatever the number of groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Connection, case, func, select
from sqlalchemy.sql import ColumnElement

from slatebandit.logging.schema import decisions, rewards, slots
from slatebandit.stats import Outcomes


def outcome_sums(
    conn: Connection, keys: tuple[Column[Any], ...], *where: ColumnElement[bool]
) -> dict[tuple[Any, ...], Outcomes]:
    """The decisions that match ``where``, grouped by the ``decisions`` columns ``keys``:
    each group's ``Outcomes``."""
    chosen = select(decisions.c.id, *keys).where(*where).cte("chosen")
    shown = (
        select(slots.c.decision_id.label("id"), func.count().label("n"))
        .join_from(slots, chosen, slots.c.decision_id == chosen.c.id)
        .group_by(slots.c.decision_id)
        .subquery("shown")
    )
    got = (
        select(
            rewards.c.decision_id.label("id"),
            func.sum(case((rewards.c.type == "click", 1), else_=0)).label("c"),
            func.sum(case((rewards.c.type == "purchase", 1), else_=0)).label("v"),
            func.sum(func.coalesce(rewards.c.value, 0.0)).label("r"),
        )
        .join_from(rewards, chosen, rewards.c.decision_id == chosen.c.id)
        .group_by(rewards.c.decision_id)
        .subquery("got")
    )
    per_slate = (
        select(
            *(chosen.c[key.name] for key in keys),
            func.coalesce(shown.c.n, 0).label("n"),
            func.coalesce(got.c.c, 0).label("c"),
            func.coalesce(got.c.v, 0).label("v"),
            func.coalesce(got.c.r, 0.0).label("r"),
        )
        .select_from(
            chosen.outerjoin(shown, shown.c.id == chosen.c.id).outerjoin(
                got, got.c.id == chosen.c.id
            )
        )
        .subquery("per_slate")
    )
    group = [per_slate.c[key.name] for key in keys]
    n, c, v, r = per_slate.c.n, per_slate.c.c, per_slate.c.v, per_slate.c.r
    # In the order of Outcomes' fields, after ``slates``.
    sums = (n, c, v, r, n * n, c * c, v * v, r * r, n * c, n * v)
    query = select(*group, func.count(), *(func.sum(x) for x in sums)).group_by(*group)
    out = {}
    for row in conn.execute(query):
        key, (slates, *totals) = tuple(row[: len(keys)]), row[len(keys) :]
        # PostgreSQL sums integers into Decimals: floats from here on
        out[key] = Outcomes(int(slates), *(float(x or 0) for x in totals))
    return out


@dataclass(frozen=True)
class Summary:
    """A window's outcomes: overall, by placement and by policy."""

    since: float
    overall: Outcomes
    placements: dict[str, Outcomes]
    policies: dict[str, Outcomes]

    def to_dict(self) -> dict[str, object]:
        """Each placement with its ``share`` of the window's slates."""
        total = self.overall.slates

        def share(o: Outcomes) -> float | None:
            return o.slates / total if total else None

        return {
            "since": self.since,
            "overall": self.overall.to_dict(),
            "placements": [
                {"placement": name, "share": share(o), **o.to_dict()}
                for name, o in sorted(self.placements.items())
            ],
            "policies": [
                {"policy": name, "share": share(o), **o.to_dict()}
                for name, o in sorted(self.policies.items())
            ],
        }


def summary(conn: Connection, since: float) -> Summary:
    """The outcomes of the slates made since ``since``."""
    groups = outcome_sums(
        conn, (decisions.c.placement, decisions.c.policy), decisions.c.created_at >= since
    )
    overall = Outcomes()
    placements: dict[str, Outcomes] = {}
    policies: dict[str, Outcomes] = {}
    for (placement, policy), outcomes in groups.items():
        overall += outcomes
        placements[placement] = placements.get(placement, Outcomes()) + outcomes
        policies[policy] = policies.get(policy, Outcomes()) + outcomes
    return Summary(since, overall, placements, policies)
