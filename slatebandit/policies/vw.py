"""The learned policy: VW scores the candidates, the slate builder explores around them."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from slatebandit.bandit import (
    FEATURE_SPEC_VERSION,
    LAYOUT_CODES,
    Exploration,
    Pick,
    SharedFeatures,
    VWScorer,
    build_slate,
    layout,
)
from slatebandit.logging import DecisionPayload
from slatebandit.retrieval import FRESH, Candidates, ItemStore


@dataclass(frozen=True)
class Slate:
    policy: str
    model_version: int
    shared: SharedFeatures
    candidates: Candidates
    scores: np.ndarray
    kinds: list[str]
    exploration: Exploration
    picks: list[Pick]

    def payload(self, store: ItemStore) -> DecisionPayload:
        """What the decision log keeps so replay can recompute every slot's pmf."""
        return DecisionPayload(
            context=self.shared.to_log(),
            candidate_revs=store.catalog.rev[self.candidates.keys].astype(np.uint32),
            candidate_flags=self.candidates.flags,
            scores=self.scores.astype(np.float16),
            layout="".join(LAYOUT_CODES[kind] for kind in self.kinds[: len(self.picks)]),
            exploration=self.exploration.to_log(),
            chosen=np.asarray([pick.index for pick in self.picks], dtype=np.uint16),
            feature_spec=FEATURE_SPEC_VERSION,
        )


class VWPolicy:
    name = "vw"

    def __init__(
        self,
        scorer: VWScorer,
        exploration: Exploration,
        explore_slots: Collection[int] = (),
        diverse_slots: Collection[int] = (),
    ) -> None:
        self.scorer = scorer
        self.exploration = exploration
        self.explore_slots = frozenset(explore_slots)
        self.diverse_slots = frozenset(diverse_slots)

    def slate(
        self,
        store: ItemStore,
        shared: SharedFeatures,
        candidates: Candidates,
        k: int,
        rng: np.random.Generator,
    ) -> Slate:
        catalog = store.catalog
        scorer = self.scorer  # one read: a model swapped in mid-request cannot mix versions
        scores = scorer.score(shared, candidates.keys, catalog.features)
        kinds = layout(k, self.explore_slots, self.diverse_slots)
        picks = build_slate(
            scores,
            catalog.category[candidates.keys],
            (candidates.flags & FRESH) != 0,
            kinds,
            self.exploration,
            rng,
        )
        return Slate(
            self.name, scorer.version, shared, candidates, scores, kinds, self.exploration, picks
        )
