"""Everything a request handler needs, built once by the lifespan and shared by all requests."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Engine

from slatebandit.config import Settings
from slatebandit.logging import GroupCommitWriter, impression_counts, recent_events, shown_items
from slatebandit.policies import VWPolicy
from slatebandit.retrieval import ItemStore, UserState, UserStates

log = logging.getLogger(__name__)
RECENT_DECISIONS = 200_000  # event ids whose shown items are kept for reward validation
USER_HISTORY = 50  # events read to rebuild a user's state


@dataclass
class Services:
    settings: Settings
    engine: Engine
    writer: GroupCommitWriter
    store: ItemStore
    policy: VWPolicy
    rng: np.random.Generator
    users: UserStates = field(default_factory=UserStates)
    decisions: OrderedDict[str, tuple[str, ...]] = field(default_factory=OrderedDict)

    async def user_state(self, user_id: str) -> UserState:
        state = self.users.get(user_id)
        if state is None:
            events = await asyncio.to_thread(self._read_events, user_id)
            catalog, index = self.store.catalog, self.store.index
            known = [(catalog.key_of[i], t, at) for i, t, at in events if i in catalog.key_of]
            with_vectors = [e for e in known if index.contains(e[0])]
            state = UserStates.rebuild(with_vectors, index.vectors)
            for key, kind, _ in known:  # purchases of items now out of the index still count
                if kind == "purchase":
                    state.purchased.add(key)
            state = self.users.get(user_id) or self.users.put(user_id, state)
        return state

    def _read_events(self, user_id: str) -> list[tuple[str, str, float]]:
        with self.engine.connect() as conn:
            return recent_events(conn, user_id, USER_HISTORY)

    def remember_decision(self, event_id: str, item_ids: tuple[str, ...]) -> None:
        self.decisions[event_id] = item_ids
        while len(self.decisions) > RECENT_DECISIONS:
            self.decisions.popitem(last=False)

    async def shown_items(self, event_id: str) -> tuple[str, ...] | None:
        """Items a decision showed; read from the database if another process made it."""
        cached = self.decisions.get(event_id)
        if cached is not None:
            return cached
        shown = await asyncio.to_thread(self._read_shown, event_id)
        if shown is not None:
            self.remember_decision(event_id, shown)
        return shown

    def _read_shown(self, event_id: str) -> tuple[str, ...] | None:
        with self.engine.connect() as conn:
            shown = shown_items(conn, event_id)
        return None if shown is None else tuple(shown)

    def load_impressions(self) -> None:
        catalog = self.store.catalog
        with self.engine.connect() as conn:
            counts = impression_counts(conn)
        for item_id, n in counts.items():
            key = catalog.key_of.get(item_id)
            if key is not None:
                catalog.add_impressions(key, n)
