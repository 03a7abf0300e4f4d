"""Merchandising rules in the database: an append-only history of versions (``rule_versions``).

A PUT adds the rule's next version; a DELETE adds one without a body. The rules in force are
each name's latest version that has a body. The largest id is the *rule set*: serving workers
poll it to notice a change, and every decision a rule shaped logs it, so the rules behind any
logged slate can be read back (``rules_at``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from slatebandit.logging.schema import rule_versions


@dataclass(frozen=True)
class StoredRule:
    name: str
    version: int
    body: dict[str, Any]
    created_at: float


def rule_set(conn: Connection) -> int:
    """The id of the latest change to any rule (0 before the first)."""
    return int(conn.execute(select(func.max(rule_versions.c.id))).scalar() or 0)


def rules_at(conn: Connection, through: int | None = None) -> list[StoredRule]:
    """The rules in force once change ``through`` was made (default: now), by name."""
    latest = select(func.max(rule_versions.c.id)).group_by(rule_versions.c.name)
    if through is not None:
        latest = latest.where(rule_versions.c.id <= through)
    rows = conn.execute(
        select(rule_versions)
        .where(rule_versions.c.id.in_(latest), rule_versions.c.body.is_not(None))
        .order_by(rule_versions.c.name)
    ).all()
    return [StoredRule(r.name, r.version, r.body, r.created_at) for r in rows]


def put_rule(conn: Connection, name: str, body: dict[str, Any]) -> StoredRule:
    """Store ``body`` as rule ``name``'s next version."""
    return _add_version(conn, name, body)


def delete_rule(conn: Connection, name: str) -> bool:
    """End rule ``name`` (its history stays); False if it is not in force."""
    latest = conn.execute(
        select(rule_versions.c.body)
        .where(rule_versions.c.name == name)
        .order_by(rule_versions.c.version.desc())
        .limit(1)
    ).first()
    if latest is None or latest.body is None:
        return False
    _add_version(conn, name, None)
    return True


def _add_version(conn: Connection, name: str, body: dict[str, Any] | None) -> StoredRule:
    version = 1 + int(
        conn.execute(
            select(func.max(rule_versions.c.version)).where(rule_versions.c.name == name)
        ).scalar()
        or 0
    )
    now = time.time()
    conn.execute(
        rule_versions.insert().values(name=name, version=version, body=body, created_at=now)
    )
    return StoredRule(name, version, body or {}, now)
