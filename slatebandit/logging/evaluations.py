"""Replay runs requested over HTTP: created, advanced, finished or failed, read back."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, insert, select, update

from slatebandit.logging.schema import evaluations

STALE_SECONDS = 120.0  # a running evaluation whose worker stayed silent this long has died


def create_evaluation(conn: Connection, evaluation_id: str, request: dict[str, Any]) -> None:
    now = time.time()
    conn.execute(
        insert(evaluations).values(
            id=evaluation_id,
            created_at=now,
            updated_at=now,
            status="running",
            phase="queued",
            done=0,
            total=0,
            request=request,
        )
    )


def advance_evaluation(
    conn: Connection, evaluation_id: str, phase: str, done: int, total: int
) -> None:
    conn.execute(
        update(evaluations)
        .where(evaluations.c.id == evaluation_id, evaluations.c.status == "running")
        .values(phase=phase, done=done, total=total, updated_at=time.time())
    )


def finish_evaluation(
    conn: Connection,
    evaluation_id: str,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    conn.execute(
        update(evaluations)
        .where(evaluations.c.id == evaluation_id)
        .values(
            status="failed" if error is not None else "done",
            phase="finished",
            result=result,
            error=None if error is None else error[:2048],
            updated_at=time.time(),
        )
    )


def get_evaluation(conn: Connection, evaluation_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(evaluations).where(evaluations.c.id == evaluation_id)).first()
    return None if row is None else _shown(row)


def latest_evaluations(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` evaluations, newest first, without their results (each is read
    alone, by id)."""
    rows = conn.execute(select(evaluations).order_by(evaluations.c.created_at.desc()).limit(limit))
    return [{**_shown(row), "result": None} for row in rows]


def _shown(row: Any) -> dict[str, Any]:
    status, error = row.status, row.error
    if status == "running" and time.time() - row.updated_at > STALE_SECONDS:
        status, error = "failed", "the worker running this evaluation stopped"
    return {
        "id": row.id,
        "status": status,
        "progress": {"phase": row.phase, "done": row.done, "total": row.total},
        "request": row.request,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "result": row.result,
        "error": error,
    }
