"""Personalizer loops: each is a named policy with its own configuration, VW model and log.

``Loops`` holds the serving side of every configured loop (``SLATEBANDIT_PERSONALIZER_LOOPS``):
its configuration and the newest model version, swapped in whole when another process (or
an admin call) changes either. ``Loop.rank`` scores the caller's actions, draws each slot from
its pmf and returns the event to log.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from slatebandit.bandit import VWScorer
from slatebandit.bandit.slate import sample
from slatebandit.errors import NotFound
from slatebandit.logging import personalizer as store
from slatebandit.personalizer.configuration import PolicyConfiguration, ServiceConfiguration
from slatebandit.personalizer.events import Event, Slot, slot_pmf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlotRequest:
    id: str | None
    features: str
    excluded: tuple[int, ...]
    baseline: int


@dataclass
class Loop:
    name: str
    service: ServiceConfiguration
    policy: PolicyConfiguration
    scorer: VWScorer
    version: int  # the pz_models version serving
    updated_at: float  # of the configuration row, to notice changes

    def rank(
        self,
        context: str,
        action_ids: Sequence[str],
        action_features: Sequence[str],
        slots: Sequence[SlotRequest],
        rng: np.random.Generator,
    ) -> tuple[Event, list[np.ndarray]]:
        """The event to log and each slot's pmf over every action."""
        mode, epsilon = self.service.learning_mode, self.service.exploration
        lines = [f or "|" for f in action_features]
        picked: list[Slot] = []
        pmfs = []
        draft = Event(context, tuple(action_ids), tuple(action_features), (), epsilon, mode)
        for request in slots:
            slot = Slot(request.id, request.features, request.excluded, request.baseline, -1, 1.0)
            draft = Event(
                context, draft.action_ids, draft.action_features, (*picked, slot), epsilon, mode
            )
            allowed = draft.allowed(len(picked))
            scores = (
                self.scorer.score_lines(draft.shared_line(len(picked)), lines)
                if mode == "Online"
                else np.zeros(len(lines))
            )
            pmf = slot_pmf(scores, allowed, request.baseline, mode, epsilon)
            chosen = sample(pmf, rng)
            picked.append(
                Slot(
                    request.id,
                    request.features,
                    request.excluded,
                    request.baseline,
                    chosen,
                    float(pmf[chosen]),
                )
            )
            pmfs.append(pmf)
        event = Event(
            context, draft.action_ids, draft.action_features, tuple(picked), epsilon, mode
        )
        return event, pmfs


class Loops:
    def __init__(self, engine: Engine, names: Sequence[str], seed: int | None = None) -> None:
        self.engine = engine
        self.names = tuple(names)
        # Ranks run on worker threads (a multi-slot rank can take a while); the sampler's
        # generator is not thread-safe, so they draw from it one at a time.
        self.rng = np.random.default_rng(seed)
        self._rank_lock = threading.Lock()
        self._loops: dict[str, Loop] = {}
        self._lock = threading.Lock()  # one refresh at a time; readers take the dict as is
        # Offline evaluations run here, one at a time, beside serving's threads.
        self.evaluation_pool = ThreadPoolExecutor(1, thread_name_prefix="pz-evaluation")
        self.evaluations: set[asyncio.Future[None]] = set()  # running or queued

    def rank(
        self,
        loop: Loop,
        context: str,
        action_ids: Sequence[str],
        action_features: Sequence[str],
        slots: Sequence[SlotRequest],
    ) -> tuple[Event, list[np.ndarray]]:
        with self._rank_lock:
            return loop.rank(context, action_ids, action_features, slots, self.rng)

    def configurations(self) -> dict[str, ServiceConfiguration]:
        return {name: loop.service for name, loop in self._loops.items()}

    def get(self, name: str) -> Loop:
        loop = self._loops.get(name)
        if loop is None:
            raise NotFound(f"loop: no Personalizer loop {name!r}", field="loop")
        return loop

    def refresh(self) -> None:
        """Create missing loops with Personalizer's defaults; load changed configurations and
        new model versions."""
        with self._lock:
            for name in self.names:
                try:
                    self._refresh(name)
                except IntegrityError:  # another worker created the loop at the same moment
                    self._refresh(name)

    def _refresh(self, name: str) -> None:
        with self.engine.begin() as conn:
            stored, latest = _stored(conn, name)
            current = self._loops.get(name)
            if current and (current.version, current.updated_at) == (
                latest.version,
                stored.updated_at,
            ):
                return
            scorer = current.scorer if current else None
            if current is None or current.version != latest.version:
                data = store.model_bytes(conn, latest.version)
                scorer = VWScorer(latest.vw_args, version=latest.version, model_bytes=data)
        assert scorer is not None
        self._loops[name] = Loop(
            name,
            ServiceConfiguration.from_store(stored.service),
            PolicyConfiguration(**stored.policy),
            scorer,
            latest.version,
            stored.updated_at,
        )


def _stored(conn: Connection, name: str) -> tuple[store.StoredLoop, store.ModelVersion]:
    """The loop's configuration and newest model; a loop seen for the first time gets
    Personalizer's defaults and an empty model."""
    stored = store.read_loop(conn, name)
    if stored is None:
        service = ServiceConfiguration(edited_at=time.time())
        store.write_loop(conn, name, service.to_store(), PolicyConfiguration().to_json())
        stored = store.read_loop(conn, name)
        assert stored is not None
    latest = store.latest_model(conn, name)
    if latest is None:
        new_model(conn, name, PolicyConfiguration(**stored.policy), "reset")
        latest = store.latest_model(conn, name)
        assert latest is not None
    return stored, latest


def new_model(
    conn: Connection,
    loop: str,
    policy: PolicyConfiguration,
    origin: str,
    data: bytes | None = None,
    vw_args: str | None = None,
) -> int:
    """Store a fresh model for ``loop`` (``data``: an imported one, with its own ``vw_args``)
    that learns from the next event on: its lineage starts after every event logged so far."""
    store.lock_loop(conn, loop)  # one model change at a time: see ``learner.checkpoint``
    latest = store.latest_model(conn, loop)
    saved = data  # an import is stored as given, so an export returns the same bytes
    if saved is None:
        scorer = VWScorer(policy.vw_args)
        try:
            saved = scorer.to_bytes()
        finally:
            scorer.finish()
    last_event = store.last_event_id(conn, loop)
    return store.save_model(
        conn,
        loop=loop,
        parent=None if latest is None else latest.version,
        origin=origin,
        vw_args=vw_args or policy.vw_args,
        examples=0,
        learned_through=max(last_event, 0 if latest is None else latest.learned_through),
        model=saved,
    )
