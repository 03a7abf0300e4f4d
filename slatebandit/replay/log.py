"""Logged decisions, streamed from SQL in chunks of whole decisions, as numpy arrays.

A chunk holds, per decision, its candidates (item keys, revisions, generator flags, logged
popularity and age bands, categories), its slot layout and exploration, and its context; and,
per shown slot in (decision, slot) order, the shown candidate, its logged propensity and its
reward (made by a ``logging.objective.SlotReward``: the learner's objective, or a metric such
as clicks or revenue). Memory stays bounded by the chunk size, whatever the size of the log.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, Connection, Engine, Select, bindparam, func, select

from slatebandit.bandit import Exploration, SharedFeatures, action_features, shifted_rows
from slatebandit.logging.objective import LOGGED, SlotReward
from slatebandit.logging.partitions import made_since
from slatebandit.logging.records import PINNED_MARK, PROMOTABLE_MARK, unpack
from slatebandit.logging.schema import decisions, item_revisions, rewards, slots
from slatebandit.replay.payloads import Contexts, Payloads
from slatebandit.retrieval import FRESH, snapshot_features

CHUNK_DECISIONS = 2000


@dataclass(frozen=True)
class Window:
    """Which decisions a replay reads: created in [since, until), with ids in (after, through]
    (with ``every``, only the ids divisible by it: the learner's held-out decisions; with
    ``model_version``, only the decisions that version scored)."""

    since: float = float("-inf")
    until: float = float("inf")
    after: int = 0
    through: int | None = None
    every: int = 0
    model_version: int | None = None
    policies: tuple[str, ...] = ()  # only decisions logged by these policies (all if empty)

    def where(self, after: Any = None) -> list:  # type: ignore[type-arg]
        """The window's clauses; ``after`` in place of ``self.after`` if given (a bound
        parameter, for a statement run once per page)."""
        clauses = [decisions.c.id > (self.after if after is None else after)]
        if np.isfinite(self.since):
            clauses.append(decisions.c.created_at >= self.since)
            clauses.append(made_since(decisions.c.id, self.since))  # prunes older partitions
        if np.isfinite(self.until):
            clauses.append(decisions.c.created_at < self.until)
        if self.through is not None:
            clauses.append(decisions.c.id <= self.through)
        if self.every:
            clauses.append(decisions.c.id % self.every == 0)
        if self.model_version is not None:
            clauses.append(decisions.c.model_version == self.model_version)
        if self.policies:
            clauses.append(decisions.c.policy.in_(self.policies))
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
        self._fields: dict[int, tuple[int, dict[str, Any]]] = {}
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
            self._fields[row.rev] = (row.key, fields)
        self.loaded_through = rev

    def features(self, rev: int) -> str:
        """The item's static scorer features as of revision ``rev``, built on first use."""
        features = self._features.get(rev)
        if features is None:
            features = self._features[rev] = snapshot_features(*self._fields[rev])
        return features


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
    exploration: np.ndarray  # (D,) index into ``explorations``
    explorations: list[Exploration | None]  # distinct ones; None: a logger we cannot recompute
    contexts: Contexts  # as logged: {"c": request context, "u": recent categories}
    specs: np.ndarray  # (D,) the feature spec each decision was scored with
    shift: np.ndarray  # (D, C) the rules' and rotation's score shifts, in units of spread
    pinned: np.ndarray  # (D, C) pinned by a rule (never allowed in another slot)
    promotable: np.ndarray  # (D, C) a promotion's match
    rules: np.ndarray  # (D,) the rule set in force (0: none)
    row: np.ndarray  # (S,) the slot's decision, as a row of the per-decision arrays
    slot: np.ndarray  # (S,)
    chosen: np.ndarray  # (S,) the shown candidate's column
    item: np.ndarray  # (S,) the shown item's key
    p_log: np.ndarray  # (S,)
    reward: np.ndarray  # (S,)

    @property
    def slot_decisions(self) -> np.ndarray:
        return self.decision_ids[self.row]

    def shaped(self, scores: np.ndarray) -> np.ndarray:
        """A target's (D, C) scores shifted as each decision's rules and rotation shifted the
        logging policy's (``bandit.Shaping``): replay under the same rules."""
        if not self.shift.any():
            return scores
        return shifted_rows(scores, self.shift, self.valid)

    def shared(self, row: int) -> SharedFeatures:
        return SharedFeatures.from_log(self.contexts[row])

    def actions(self, revisions: Revisions, row: int) -> list[str]:
        """The candidates' features of one decision, exactly as the scorer saw them."""
        return [self.action(revisions, row, column) for column in range(int(self.valid[row].sum()))]

    def action(self, revisions: Revisions, row: int, column: int) -> str:
        """One candidate's features, exactly as the scorer saw them."""
        return action_features(
            revisions.features(int(self.revs[row, column])),
            int(self.dynamic[row, column]),
            int(self.specs[row]),
        )


def read_chunks(
    engine: Engine,
    window: Window,
    *,
    reward: SlotReward = LOGGED,
    chunk: int = CHUNK_DECISIONS,
) -> Iterator[tuple[Chunk, Revisions]]:
    """Every decision of ``window`` in id order, ``chunk`` decisions at a time, each slot's
    reward made by ``reward``."""
    with engine.connect() as conn:
        revisions = Revisions(conn)
        queries = _ShownQueries(conn, reward)
        for rows in _pages(conn, window, chunk, with_payload=True):
            ids = np.array([row[0] for row in rows], dtype=np.int64)
            payloads = Payloads.decode([row[1] for row in rows])
            revisions.load_through(int(payloads.revs.max(initial=0)))
            shown = _shown(queries, ids)
            yield _chunk(ids, payloads, shown, revisions), revisions


@dataclass(frozen=True)
class Shown:
    """Shown slots of a run of decisions, in (decision, slot) order, with their rewards."""

    decisions: int  # in the run
    decision: np.ndarray  # decision id
    row: np.ndarray  # index of the decision in the run
    slot: np.ndarray
    item: np.ndarray
    p_log: np.ndarray
    reward: np.ndarray


def read_shown(
    engine: Engine,
    window: Window,
    *,
    reward: SlotReward = LOGGED,
    chunk: int = CHUNK_DECISIONS,
) -> Iterator[Shown]:
    """The shown slots and rewards (made by ``reward``) of ``window`` without the payloads
    (the reward model's pass)."""
    with engine.connect() as conn:
        queries = _ShownQueries(conn, reward)
        for rows in _pages(conn, window, chunk, with_payload=False):
            ids = np.array([row[0] for row in rows], dtype=np.int64)
            yield _shown(queries, ids)


def _pages(
    conn: Connection, window: Window, chunk: int, *, with_payload: bool
) -> Iterator[list[tuple[Any, ...]]]:
    columns = [decisions.c.id, decisions.c.payload] if with_payload else [decisions.c.id]
    page = _Statement(
        conn,
        select(*columns)
        .where(*window.where(after=bindparam("page_after", 0, type_=BigInteger)))
        .order_by(decisions.c.id)
        .limit(chunk),
    )
    after = window.after
    while rows := page.fetch(page_after=after):
        yield rows
        after = rows[-1][0]


class _Statement:
    """A statement compiled once for the driver's cursor, fetched with new values of its
    bind parameters: replay runs each of its few statements once per chunk, and compiling
    them each time was 3% of a replay.

    Rows come as plain tuples straight from the cursor. Replay reads millions of rows, and
    SQLAlchemy's Row objects cost 5 to 20 times the query itself here (measured: 20,000 slot
    rows in 30 ms this way, 100 ms through ``Result.all()`` and tuples, 600 ms into numpy)."""

    def __init__(self, conn: Connection, statement: Select[Any]) -> None:
        # render_postcompile: IN (...) lists become plain bound parameters the cursor takes
        compiled = statement.compile(
            dialect=conn.dialect, compile_kwargs={"render_postcompile": True}
        )
        self.conn = conn
        self.sql = str(compiled)
        self.params = compiled.params
        self.order = list(compiled.positiontup or ()) if compiled.positional else None

    def fetch(self, **values: Any) -> list[tuple[Any, ...]]:
        params = {**self.params, **values}
        cursor = self.conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            if self.order is not None:
                cursor.execute(self.sql, [params[name] for name in self.order])
            else:
                cursor.execute(self.sql, params)
            return list(cursor.fetchall())
        finally:
            cursor.close()


class _ShownQueries:
    """The two statements that read a run of decisions' shown slots and rewards."""

    def __init__(self, conn: Connection, rule: SlotReward) -> None:
        lo, hi = (bindparam(name, 0, type_=BigInteger) for name in ("lo", "hi"))
        self.rule = rule
        self.slots = _Statement(
            conn,
            select(slots.c.decision_id, slots.c.slot, slots.c.item_key, slots.c.propensity)
            .where(slots.c.decision_id.between(lo, hi))
            .order_by(slots.c.decision_id, slots.c.slot),
        )
        self.rewards = _Statement(
            conn,
            select(rewards.c.decision_id, rewards.c.item_key, rule.column())
            .where(rewards.c.decision_id.between(lo, hi))
            .order_by(rewards.c.id),
        )


def _shown(queries: _ShownQueries, ids: np.ndarray) -> Shown:
    lo, hi, rule = int(ids[0]), int(ids[-1]), queries.rule
    table = queries.slots.fetch(lo=lo, hi=hi)
    decision = np.array([r[0] for r in table], dtype=np.int64)
    keep = np.isin(decision, ids)  # ids in (lo, hi) outside the window are not ours
    decision = decision[keep]
    slot = np.array([r[1] for r in table], dtype=np.int64)[keep]
    item = np.array([r[2] for r in table], dtype=np.int64)[keep]
    p_log = np.array([r[3] for r in table], dtype=np.float64)[keep]

    got = queries.rewards.fetch(lo=lo, hi=hi)
    reward = np.full(len(decision), float(rule.default))
    if got:
        # A slot is (decision, item): one key per slot; find each reward's slot by search.
        # Decisions are numbered by their place in the run, not by id, so the key stays far
        # from overflow whatever the ids (a run may span days, 2^40 ids apart).
        radix = int(max(item.max(initial=0), max(r[1] for r in got))) + 1
        slot_keys = np.searchsorted(ids, decision) * radix + item
        order = np.argsort(slot_keys)
        rewarded_decision = np.array([r[0] for r in got], dtype=np.int64)
        place = np.searchsorted(ids, rewarded_decision).clip(max=len(ids) - 1)
        ours = ids[place] == rewarded_decision  # not a decision of the window: no slot here
        reward_keys = np.where(ours, place * radix + np.array([r[1] for r in got]), -1)
        at = np.searchsorted(slot_keys[order], reward_keys).clip(max=max(len(order) - 1, 0))
        found = slot_keys[order][at] == reward_keys if len(order) else np.zeros(0, dtype=bool)
        index = order[at][found]
        values = np.array([r[2] for r in got], dtype=np.float64)[found]
        rewarded = np.unique(index)
        if rule.aggregation == "sum":
            total = np.zeros(len(decision))
            np.add.at(total, index, values)
            reward[rewarded] = total[rewarded]
        else:  # the earliest: rewards come in id order
            _, first = np.unique(index, return_index=True)
            reward[rewarded] = values[first]
    row = np.searchsorted(ids, decision)
    return Shown(len(ids), decision, row, slot, item, p_log, reward)


def _chunk(ids: np.ndarray, payloads: Payloads, shown: Shown, revisions: Revisions) -> Chunk:
    distinct: dict[tuple[Any, ...], int] = {}  # (kind, param) -> its place in ``explorations``
    explorations: list[Exploration | None] = []
    codes = []
    for logged in payloads.explorations:
        kind = (logged.get("kind"), logged.get("param"))
        code = distinct.get(kind)
        if code is None:
            code = distinct[kind] = len(explorations)
            explorations.append(Exploration.from_log(logged))
        codes.append(code)
    exploration = np.array(codes, dtype=np.int64)
    revs = payloads.revs
    return Chunk(
        decision_ids=ids,
        valid=payloads.valid,
        keys=np.where(payloads.valid, revisions.key[revs], -1),
        revs=revs,
        fresh=(payloads.flags & FRESH) != 0,
        category=revisions.category[revs],
        dynamic=payloads.dynamic,
        layout=payloads.layout,
        exploration=exploration,
        explorations=explorations,
        contexts=payloads.contexts,
        specs=payloads.specs,
        shift=payloads.shift,
        pinned=(payloads.marks & PINNED_MARK) != 0,
        promotable=(payloads.marks & PROMOTABLE_MARK) != 0,
        rules=payloads.rules,
        row=shown.row,
        slot=shown.slot,
        chosen=payloads.chosen[shown.row, shown.slot],
        item=shown.item,
        p_log=shown.p_log,
        reward=shown.reward,
    )
