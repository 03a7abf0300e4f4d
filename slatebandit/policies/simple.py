"""Policies without a model: ``popular``, ``random`` and ``content``.

popular  the popularity band each candidate had at decision time (the byte the decision logs,
         so replay's ``popular`` target recomputes these exact scores); ties keep retrieval
         order
random   uniform over the candidates still allowed, in every slot: no exploit, explore or
         diverse distinction (epsilon-greedy with epsilon 1 over an all-exploit layout)
content  cosine similarity of each candidate's index vector to the shopper's session vector
         (what they viewed and clicked, time-decayed, plus the request's session items); a
         shopper with no session ties every candidate, so retrieval order decides
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from slatebandit.bandit import Exploration, slot_pools
from slatebandit.policies.base import Policy, Query
from slatebandit.retrieval import ItemStore, popularity_band

if TYPE_CHECKING:
    from slatebandit.replay.log import Chunk, Revisions

UNIFORM = Exploration("epsilon", epsilon=1.0)


class Popular(Policy):
    name = "popular"

    def scores(self, store: ItemStore, query: Query, dynamic: np.ndarray) -> np.ndarray:
        return popularity_band(dynamic).astype(np.float64)

    def logged_scores(self, chunk: Chunk, revisions: Revisions) -> np.ndarray:
        return popularity_band(chunk.dynamic).astype(np.float64)


class Random(Policy):
    name = "random"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(UNIFORM)  # uniform in every slot, whatever the settings say

    uses_logged_exploration = False  # uniform in every slot, whatever the log's layout

    def scores(self, store: ItemStore, query: Query, dynamic: np.ndarray) -> np.ndarray:
        return np.zeros(len(query.candidates))

    def logged_scores(self, chunk: Chunk, revisions: Revisions) -> np.ndarray:
        return np.zeros(chunk.valid.shape)

    def logged_pmfs(self, kinds, allowed, scores, fresh, novel, exploration, promotable=None):  # type: ignore[no-untyped-def]
        """Uniform over what each slot may hold: a promoted slot's promotable candidates (as
        serving builds it under the same rules), every other slot's allowed ones."""
        pools = slot_pools(np.where(kinds == "m", "m", "e"), allowed, fresh, novel, promotable)
        return pools / pools.sum(axis=1, keepdims=True)


class Content(Policy):
    name = "content"

    def scores(self, store: ItemStore, query: Query, dynamic: np.ndarray) -> np.ndarray:
        keys = query.candidates.keys
        scores = np.zeros(len(keys))
        session = query.candidates.session
        if session is None or len(keys) == 0 or session.shape != (store.index.dim,):
            return scores
        live, vectors = store.index.live_vectors(keys)
        if len(live) == 0:
            return scores
        norms = np.linalg.norm(vectors, axis=1)
        cosine = vectors @ session / np.where(norms > 0, norms, 1.0)
        # An item deleted during the request keeps score 0; it is filtered from the next one.
        position = {int(key): i for i, key in enumerate(keys.tolist())}
        scores[[position[int(key)] for key in live.tolist()]] = cosine
        return scores
