"""The model registry: checkpointed VW versions and the promotions that choose which serves."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, select, update

from slatebandit.errors import NotFound
from slatebandit.logging.schema import (
    canaries,
    experiments,
    model_gates,
    model_versions,
    promotions,
)


@dataclass(frozen=True)
class ModelVersion:
    version: int
    parent: int | None
    vw_args: str
    feature_spec: int
    examples: int
    learned_through: int
    created_at: float
    compared: int = 0  # apprentice mode: decisions compared with the serving policy
    agreed: int = 0  # ...and how many of them had the same first item

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = dict(self.__dict__)
        out["agreement"] = self.agreed / self.compared if self.compared else None
        return out


_COLUMNS = (
    model_versions.c.version,
    model_versions.c.parent,
    model_versions.c.vw_args,
    model_versions.c.feature_spec,
    model_versions.c.examples,
    model_versions.c.learned_through,
    model_versions.c.created_at,
    model_versions.c.compared,
    model_versions.c.agreed,
)


def save_version(
    conn: Connection,
    *,
    parent: int | None,
    vw_args: str,
    feature_spec: int,
    examples: int,
    learned_through: int,
    model: bytes,
    compared: int = 0,
    agreed: int = 0,
) -> int:
    return conn.execute(
        insert(model_versions)
        .values(
            parent=parent,
            vw_args=vw_args,
            feature_spec=feature_spec,
            examples=examples,
            learned_through=learned_through,
            created_at=time.time(),
            model=model,
            compared=compared,
            agreed=agreed,
        )
        .returning(model_versions.c.version)
    ).scalar_one()


def list_versions(conn: Connection) -> list[ModelVersion]:
    rows = conn.execute(select(*_COLUMNS).order_by(model_versions.c.version)).all()
    return [ModelVersion(*row) for row in rows]


def get_version(conn: Connection, version: int) -> ModelVersion | None:
    row = conn.execute(select(*_COLUMNS).where(model_versions.c.version == version)).first()
    return None if row is None else ModelVersion(*row)


def latest_version(conn: Connection) -> ModelVersion | None:
    row = conn.execute(select(*_COLUMNS).order_by(model_versions.c.version.desc()).limit(1)).first()
    return None if row is None else ModelVersion(*row)


PRUNED = b""  # the model bytes of a pruned checkpoint (its row and figures stay)


def model_bytes(conn: Connection, version: int) -> bytes:
    data: bytes = conn.execute(
        select(model_versions.c.model).where(model_versions.c.version == version)
    ).scalar_one()
    if data == PRUNED:
        raise _pruned(version)
    return data


def has_model(conn: Connection, version: int) -> bool:
    """Whether version ``version`` exists and still holds its model (without reading it)."""
    size = conn.execute(
        select(func.length(model_versions.c.model)).where(model_versions.c.version == version)
    ).scalar()
    return bool(size)


def require_model(conn: Connection, version: int) -> None:
    """Raise NotFound if version ``version`` was pruned: it cannot serve."""
    if not has_model(conn, version):
        raise _pruned(version)


def _pruned(version: int) -> NotFound:
    return NotFound(
        f"version: model version {version} was pruned (SLATEBANDIT_KEEP_MODELS keeps the "
        "newest checkpoints, the latest champions and what canaries and experiments serve)",
        field="version",
    )


def prune_models(conn: Connection, keep: int) -> int:
    """Drop the model bytes of checkpoints that nothing will serve again; returns how many.

    A learner checkpoints every few seconds under load, each a model of megabytes (4.4 MB in
    the soak: half the database's growth, 48 MB a minute). Kept: the newest ``keep`` versions,
    the last ``keep`` champions (what rollbacks return to), and every version a running
    canary or experiment serves. A pruned version keeps its row, lineage and verdicts; loading
    it fails with a clear error. ``keep`` 0 keeps every model."""
    if keep <= 0:
        return 0
    oldest_kept = conn.execute(
        select(model_versions.c.version)
        .order_by(model_versions.c.version.desc())
        .offset(keep - 1)
        .limit(1)
    ).scalar()
    if oldest_kept is None:
        return 0
    champions = select(promotions.c.version).order_by(promotions.c.id.desc()).limit(keep)
    kept = set(conn.execute(champions).scalars())
    kept |= set(
        conn.execute(select(canaries.c.version).where(canaries.c.status == "running")).scalars()
    )
    running = select(experiments.c.arms).where(experiments.c.status == "running")
    for arms in conn.execute(running).scalars():
        for arm in arms:
            kept |= {int(v) for v in re.findall(r"vw@(\d+)", str(arm.get("policy", "")))}
    pruned = conn.execute(
        update(model_versions)
        .where(
            model_versions.c.version < oldest_kept,
            model_versions.c.version.not_in(kept),
            func.length(model_versions.c.model) > 0,
        )
        .values(model=PRUNED)
    )
    return int(pruned.rowcount)


def champion(conn: Connection) -> int | None:
    """The version that serves, or None while no version was ever promoted."""
    return conn.execute(
        select(promotions.c.version).order_by(promotions.c.id.desc()).limit(1)
    ).scalar()


def promote(conn: Connection, version: int, reason: str) -> None:
    conn.execute(insert(promotions).values(version=version, created_at=time.time(), reason=reason))


def previous_champion(conn: Connection) -> int | None:
    """The champion before the current one (what a rollback returns to)."""
    current = champion(conn)
    return conn.execute(
        select(promotions.c.version)
        .where(promotions.c.version != current)
        .order_by(promotions.c.id.desc())
        .limit(1)
    ).scalar()


def record_gate(
    conn: Connection,
    *,
    version: int,
    champion: int | None,
    promoted: bool,
    reason: str,
    details: dict[str, object],
    stage: str = "guard",
    outcome: str = "",
) -> None:
    """Keep a release verdict on ``version`` (and promote it if it passed): ``stage`` is the
    step that spoke (guard, canary, watch, manual), ``outcome`` what it said."""
    outcome = outcome or ("promote" if promoted else "reject")
    conn.execute(
        insert(model_gates).values(
            version=version,
            champion=champion,
            created_at=time.time(),
            promoted=promoted,
            reason=reason[:512],
            details=details,
            stage=stage,
            outcome=outcome,
        )
    )
    if promoted:
        promote(conn, version, reason=f"{stage}: {reason}"[:256])


def operator_release(conn: Connection, version: int, outcome: str, reason: str) -> None:
    """An operator's promotion or rollback to ``version``: it serves, and the release timeline
    records it beside the automatic verdicts (stage ``manual``)."""
    current = champion(conn)
    promote(conn, version, reason=reason)
    record_gate(
        conn,
        version=version,
        champion=current,
        promoted=False,  # promoted above, under the operator's reason
        reason=reason,
        details={},
        stage="manual",
        outcome=outcome,
    )


def gate_verdicts(
    conn: Connection, version: int | None = None, limit: int | None = None
) -> list[dict[str, object]]:
    """The gate's verdicts, newest first (on one version, or all; at most ``limit``)."""
    query = select(model_gates).order_by(model_gates.c.id.desc()).limit(limit)
    if version is not None:
        query = query.where(model_gates.c.version == version)
    return [{k: v for k, v in row._mapping.items() if k != "id"} for row in conn.execute(query)]
