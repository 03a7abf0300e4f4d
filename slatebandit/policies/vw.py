"""The learned policy: VW scores the candidates, the slate builder explores around them."""

from __future__ import annotations

import time
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
    action_features,
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
    revs: np.ndarray  # item revision of each candidate, read with its features
    dynamic: np.ndarray  # popularity and age bands the scorer saw (Catalog.dynamic_codes)
    scores: np.ndarray
    kinds: list[str]
    exploration: Exploration
    picks: list[Pick]

    def payload(self) -> DecisionPayload:
        """What the decision log keeps so replay can recompute every slot's pmf."""
        return DecisionPayload(
            context=self.shared.to_log(),
            candidate_revs=self.revs.astype(np.uint32),
            candidate_flags=self.candidates.flags,
            candidate_dynamic=self.dynamic,
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
        keys = candidates.keys.tolist()
        revs = catalog.rev[candidates.keys]
        dynamic = catalog.dynamic_codes(candidates.keys, time.time())
        actions = [
            action_features(catalog.features[key], code)
            for key, code in zip(keys, dynamic.tolist(), strict=True)
        ]
        scores = scorer.score(shared, actions)
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
            self.name,
            scorer.version,
            shared,
            candidates,
            revs,
            dynamic,
            scores,
            kinds,
            self.exploration,
            picks,
        )
