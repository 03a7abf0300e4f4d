"""The learned policy: VW scores the candidates, the slate builder explores around them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from slatebandit.bandit import VWScorer
from slatebandit.policies.base import Policy, Query
from slatebandit.retrieval import ItemStore

if TYPE_CHECKING:
    from slatebandit.replay.log import Chunk, Revisions


class VWPolicy(Policy):
    """``vw`` follows the champion (the registry swaps ``scorer``); ``vw@V`` is pinned to V."""

    def __init__(self, scorer: VWScorer, *args: Any, pinned: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scorer = scorer
        self.pinned = pinned

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"vw@{self.scorer.version}" if self.pinned else "vw"

    @property
    def model_version(self) -> int:
        return self.scorer.version

    def scores(self, store: ItemStore, query: Query, dynamic: np.ndarray) -> np.ndarray:
        return self.scorer.score_items(query.shared, store.catalog, query.candidates.keys, dynamic)

    def logged_scores(self, chunk: Chunk, revisions: Revisions) -> np.ndarray:
        """Each logged decision's candidates scored with the features its scorer saw."""
        out = np.zeros(chunk.valid.shape)
        for row in range(len(chunk.decision_ids)):
            actions = chunk.actions(revisions, row)
            out[row, : len(actions)] = self.scorer.score(chunk.shared(row), actions)
        return out

    def config(self) -> dict[str, Any]:
        scorer = self.scorer  # one read: the bytes and the version must match
        return {
            **super().config(),
            "vw_args": scorer.args,
            "version": scorer.version,
            "model": scorer.to_bytes(),
        }
