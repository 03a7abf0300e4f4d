"""Logged decisions, streamed from SQL in chunks of whole decisions, as numpy arrays.

A chunk holds, per decision, its candidates (item keys, revisions, generator flags, logged
popularity and age bands, categories), its slot layout and exploration, and its context; and,
per shown slot in (decision, slot) order, the shown candidate, its logged propensity and its
reward (aggregated and defaulted as the learner does). Memory stays bounded by the chunk size,
whatever the size of the log.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, Row, func, select

from slatebandit.bandit import Exploration, SharedFeatures, action_features
from slatebandit.logging import DecisionPayload
from slatebandit.logging.learning import slot_reward
from slatebandit.logging.records import unpack
from slatebandit.logging.schema import decisions, item_revisions, rewards, slots
from slatebandit.retrieval import FRESH, item_tokens, scorer_features

CHUNK_DECISIONS = 2000


@dataclass(frozen=True)
class Window:
    """Which decisions a replay reads: created in [since, until), with ids in (after, through]."""

    since: float = float("-inf")
    until: float = float("inf")
    after: int = 0
    through: int | None = None

    def where(self) -> list:  # type: ignore[type-arg]
        clauses = [decisions.c.id > self.after]
        if np.isfinite(self.since):
            clauses.append(decisions.c.created_at >= self.since)
        if np.isfinite(self.until):
            clauses.append(decisions.c.created_at < self.until)
        if self.through is not None:
            clauses.append(decisions.c.id <= self.through)
        return clauses


@dataclass(frozen=True)
class Extent:
    decisions: int
    first_id: int | None
    last_id: int | None
    first_at: float | None
    last_at: float | None


def extent(conn: Connection, window: Window) -> Extent:
    row = conn.execute(
        select(
            func.count(),
            func.min(decisions.c.id),
            func.max(decisions.c.id),
            func.min(decisions.c.created_at),
            func.max(decisions.c.created_at),
        ).where(*window.where())
    ).one()
    return Extent(int(row[0]), row[1], row[2], row[3], row[4])


def nth_decision(conn: Connection, window: Window, n: int) -> int | None:
    """The id of the ``n``-th decision (0-based) of ``window``, in id order."""
    return conn.execute(
        select(decisions.c.id).where(*window.where()).order_by(decisions.c.id).offset(n).limit(1)
    ).scalar()


class Revisions:
    """Item revision -> item key, category code and scorer features, read as needed."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.key = np.zeros(1, dtype=np.int64)
        self.category = np.zeros(1, dtype=np.int32)
        self.category_codes: dict[str, int] = {"": 0}
        self._features: dict[int, str] = {}
        self.loaded_through = 0

    def load_through(self, rev: int) -> None:
        if rev <= self.loaded_through:
            return
        size = max(rev + 1, 2 * len(self.key))
        self.key = np.resize(self.key, size)
        self.category = np.resize(self.category, size)
        for row in self.conn.execute(
            select(item_revisions.c.rev, item_revisions.c.key, item_revisions.c.snapshot)
            .where(item_revisions.c.rev > self.loaded_through, item_revisions.c.rev <= rev)
            .order_by(item_revisions.c.rev)
        ):
            fields = unpack(row.snapshot)
            self.key[row.rev] = row.key
            code = self.category_codes.setdefault(fields["category"], len(self.category_codes))
            self.category[row.rev] = code
            tokens = item_tokens(
                fields["category"], fields["brand"], fields["price"], fields["attributes"]
            )
            self._features[row.rev] = scorer_features(row.key, tokens)
        self.loaded_through = rev

    def features(self, rev: int) -> str:
        return self._features[rev]


@dataclass
class Chunk:
    """Whole decisions: per-decision arrays are (D,) or (D, C) padded; per-slot arrays are (S,)."""

    decision_ids: np.ndarray
    valid: np.ndarray  # (D, C) a real candidate, not padding
    keys: np.ndarray  # (D, C) item keys
    revs: np.ndarray  # (D, C)
    fresh: np.ndarray  # (D, C) proposed by the fresh generator
    category: np.ndarray  # (D, C) category codes
    dynamic: np.ndarray  # (D, C) logged popularity and age bands (pop << 4 | age)
    layout: np.ndarray  # (D, K) layout letters, "" past a decision's last slot
    explorations: list[Exploration | None]  # None: a logger we cannot recompute (imported)
    contexts: list[SharedFeatures]
    row: np.ndarray  # (S,) the slot's decision, as a row of the per-decision arrays
    slot: np.ndarray  # (S,)
    chosen: np.ndarray  # (S,) the shown candidate's column
    item: np.ndarray  # (S,) the shown item's key
    p_log: np.ndarray  # (S,)
    reward: np.ndarray  # (S,)

    @property
    def slot_decisions(self) -> np.ndarray:
        return self.decision_ids[self.row]

    def actions(self, revisions: Revisions, row: int) -> list[str]:
        """The candidates' features of one decision, exactly as the scorer saw them."""
        n = int(self.valid[row].sum())
        return [
            action_features(revisions.features(int(rev)), int(code))
            for rev, code in zip(self.revs[row, :n], self.dynamic[row, :n], strict=True)
        ]


def read_chunks(
    engine: Engine,
    window: Window,
    *,
    aggregation: str = "sum",
    default_reward: float = 0.0,
    chunk: int = CHUNK_DECISIONS,
) -> Iterator[tuple[Chunk, Revisions]]:
    """Every decision of ``window`` in id order, ``chunk`` decisions at a time."""
    with engine.connect() as conn:
        revisions = Revisions(conn)
        after = window.after
        while True:
            page = Window(window.since, window.until, after, window.through)
            rows = conn.execute(
                select(decisions.c.id, decisions.c.payload)
                .where(*page.where())
                .order_by(decisions.c.id)
                .limit(chunk)
            ).all()
            if not rows:
                return
            payloads = [DecisionPayload.decode(row.payload) for row in rows]
            revisions.load_through(max(int(p.candidate_revs.max(initial=0)) for p in payloads))
            yield (
                _chunk(conn, rows, payloads, revisions, aggregation, default_reward),
                revisions,
            )
            after = rows[-1].id


def _chunk(
    conn: Connection,
    rows: Sequence[Row[Any, Any]],
    payloads: list[DecisionPayload],
    revisions: Revisions,
    aggregation: str,
    default_reward: float,
) -> Chunk:
    ids = np.array([row.id for row in rows], dtype=np.int64)
    width = max(len(p.candidate_revs) for p in payloads)
    depth = max(len(p.layout) for p in payloads)
    revs = np.zeros((len(ids), width), dtype=np.int64)
    flags = np.zeros((len(ids), width), dtype=np.uint8)
    dynamic = np.zeros((len(ids), width), dtype=np.uint8)
    valid = np.zeros((len(ids), width), dtype=bool)
    layout = np.full((len(ids), depth), "", dtype="<U1")
    for i, p in enumerate(payloads):
        n = len(p.candidate_revs)
        revs[i, :n], flags[i, :n], dynamic[i, :n], valid[i, :n] = (
            p.candidate_revs,
            p.candidate_flags,
            p.candidate_dynamic,
            True,
        )
        layout[i, : len(p.layout)] = list(p.layout)

    shown = conn.execute(
        select(slots.c.decision_id, slots.c.slot, slots.c.item_key, slots.c.propensity)
        .where(slots.c.decision_id.between(int(ids[0]), int(ids[-1])))
        .order_by(slots.c.decision_id, slots.c.slot)
    ).all()
    position = {int(d): i for i, d in enumerate(ids)}
    shown = [s for s in shown if s.decision_id in position]
    row = np.array([position[s.decision_id] for s in shown], dtype=np.int64)
    slot = np.array([s.slot for s in shown], dtype=np.int64)
    got: dict[tuple[int, int], list[float]] = {}
    for r in conn.execute(
        select(rewards.c.decision_id, rewards.c.item_key, rewards.c.reward)
        .where(rewards.c.decision_id.between(int(ids[0]), int(ids[-1])))
        .order_by(rewards.c.id)
    ):
        got.setdefault((r.decision_id, r.item_key), []).append(r.reward)
    return Chunk(
        decision_ids=ids,
        valid=valid,
        keys=np.where(valid, revisions.key[revs], -1),
        revs=revs,
        fresh=(flags & FRESH) != 0,
        category=revisions.category[revs],
        dynamic=dynamic,
        layout=layout,
        explorations=[Exploration.from_log(p.exploration) for p in payloads],
        contexts=[SharedFeatures(dict(p.context["c"]), tuple(p.context["u"])) for p in payloads],
        row=row,
        slot=slot,
        chosen=np.array(
            [int(payloads[r].chosen[s]) for r, s in zip(row.tolist(), slot.tolist(), strict=True)],
            dtype=np.int64,
        ),
        item=np.array([s.item_key for s in shown], dtype=np.int64),
        p_log=np.array([s.propensity for s in shown], dtype=np.float64),
        reward=np.array(
            [
                slot_reward(got.get((s.decision_id, s.item_key), []), aggregation, default_reward)
                for s in shown
            ],
            dtype=np.float64,
        ),
    )
