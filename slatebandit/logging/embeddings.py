"""Interactions for the embedding job, and the collaborative vectors it stores."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
from sqlalchemy import Connection, Engine, delete, func, insert, select

from slatebandit.logging.schema import embedding_versions, events, item_factors, items

KEEP_VERSIONS = 3
_BATCH = 5_000


def read_interactions(
    engine: Engine,
    weights: Mapping[str, float],
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user ids, item keys, weights, types) of every event whose type has a weight."""
    types = [t for t, w in weights.items() if w > 0]
    users: list[str] = []
    items: list[int] = []
    kinds: list[str] = []
    after = 0
    with engine.connect() as conn:
        while True:
            rows = conn.execute(
                select(events.c.id, events.c.user_id, events.c.item_key, events.c.type)
                .where(events.c.id > after, events.c.type.in_(types))
                .order_by(events.c.id)
                .limit(100_000)
            ).all()
            if not rows:
                break
            for row in rows:
                users.append(row[1])
                items.append(row[2])
                kinds.append(row[3])
            after = rows[-1][0]
            if progress is not None:
                progress(len(rows))
    weight = np.array([weights[k] for k in kinds], dtype=np.float64)
    return (
        np.array(users, dtype=object),
        np.array(items, dtype=np.int64),
        weight,
        np.array(kinds, dtype=object),
    )


def item_facts(engine: Engine) -> dict[int, tuple[str, float | None]]:
    """Item key -> (category, price), for the users' batch features."""
    with engine.connect() as conn:
        rows = conn.execute(select(items.c.key, items.c.category, items.c.price)).all()
    return {row[0]: (row[1], row[2]) for row in rows}


def save_factors(
    engine: Engine,
    *,
    method: str,
    interactions: int,
    seconds: float,
    keys: np.ndarray,
    vectors: np.ndarray,
    counts: np.ndarray,
) -> int:
    """Store a new version (one transaction); older ones beyond ``KEEP_VERSIONS`` go."""
    with engine.begin() as conn:
        version = conn.execute(
            insert(embedding_versions)
            .values(
                created_at=time.time(),
                method=method,
                interactions=interactions,
                items=len(keys),
                seconds=seconds,
            )
            .returning(embedding_versions.c.version)
        ).scalar_one()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        for start in range(0, len(keys), _BATCH):
            conn.execute(
                insert(item_factors),
                [
                    {"version": version, "key": int(k), "count": float(c), "vector": v.tobytes()}
                    for k, c, v in zip(
                        keys[start : start + _BATCH],
                        counts[start : start + _BATCH],
                        vectors[start : start + _BATCH],
                        strict=True,
                    )
                ],
            )
        old = select(embedding_versions.c.version).where(
            embedding_versions.c.version <= version - KEEP_VERSIONS
        )
        conn.execute(delete(item_factors).where(item_factors.c.version.in_(old)))
        conn.execute(delete(embedding_versions).where(embedding_versions.c.version.in_(old)))
    return int(version)


def latest_factors_version(conn: Connection) -> int:
    return int(conn.execute(select(func.max(embedding_versions.c.version))).scalar() or 0)


def load_factors(conn: Connection, version: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, vectors, counts) of ``version``, keys sorted."""
    rows = conn.execute(
        select(item_factors.c.key, item_factors.c.count, item_factors.c.vector)
        .where(item_factors.c.version == version)
        .order_by(item_factors.c.key)
    ).all()
    keys = np.array([r[0] for r in rows], dtype=np.int64)
    counts = np.array([r[1] for r in rows], dtype=np.float64)
    if not rows:
        return keys, np.zeros((0, 0), dtype=np.float32), counts
    vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), -1)
    return keys, vectors.copy(), counts
