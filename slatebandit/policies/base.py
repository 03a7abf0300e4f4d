"""The policy interface: a policy scores the candidates, the slate builder does the rest.

Every policy turns the same ``Query`` (shared features, candidates with their session vector)
into one score per candidate; ``Policy.slate`` hands the scores to the slate builder with the
policy's exploration and slot layout, which fills the slots and knows the exact probability of
each pick (``bandit.build_slate``). So every policy returns exact per-slot propensities by
construction. Replay recomputes them from what the decision logged for ``vw@V``, ``popular``
and ``random``; ``content`` and ``blend`` read the session vector, which is not logged.

A policy's ``name`` is its SPEC (``policies.specs``), logged with every decision it makes.
``dump`` writes everything it needs to make the same slates again (its spec, exploration,
layout and, for VW, the model) and ``specs.load_policy`` reads it back.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from slatebandit.bandit import (
    FEATURE_SPEC_VERSION,
    LAYOUT_CODES,
    Exploration,
    Pick,
    Shaping,
    SharedFeatures,
    build_slate,
    layout,
    shaped_layout,
    slot_pmfs,
)
from slatebandit.errors import InvalidInput
from slatebandit.logging import DecisionPayload
from slatebandit.logging.records import PINNED_MARK, PROMOTABLE_MARK, pack
from slatebandit.retrieval import FRESH, Candidates, ItemStore

if TYPE_CHECKING:
    from slatebandit.replay.log import Chunk, Revisions


@dataclass(frozen=True)
class Query:
    """What a policy may look at for one request."""

    shared: SharedFeatures
    candidates: Candidates


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
    shaping: Shaping | None = None  # what rules and rotation did to it

    def payload(self) -> DecisionPayload:
        """What the decision log keeps so replay can recompute every slot's pmf."""
        shaping = self.shaping or Shaping()
        chosen = np.asarray([pick.index for pick in self.picks], dtype=np.uint16)
        return DecisionPayload(
            context=self.shared.to_log(),
            candidate_revs=self.revs.astype(np.uint32),
            candidate_flags=self.candidates.flags,
            candidate_dynamic=self.dynamic,
            scores=None,  # they follow from the model and the features (logging.records)
            layout="".join(LAYOUT_CODES[kind] for kind in self.kinds[: len(self.picks)]),
            exploration=self.exploration.to_log(),
            chosen=chosen,
            feature_spec=FEATURE_SPEC_VERSION,
            shift=shaping.shift,
            rule_marks=rule_marks(len(self.candidates), shaping),
            rules=shaping.rules,
            shown_sources=self.candidates.sources[chosen],
            shown_scores=self.scores[chosen].astype(np.float32),
        )


class Policy:
    """Scores candidates; subclasses implement ``scores`` (higher is better).

    Replay asks the same object for its pmf over logged slots (``replay.targets``):
    ``logged_scores`` scores a chunk of logged decisions' candidates as the policy would have
    at decision time, and ``logged_pmfs`` turns scores into slot pmfs.
    """

    name = ""
    uses_logged_exploration = True  # in replay, its slots follow each decision's exploration

    def __init__(
        self,
        exploration: Exploration,
        explore_slots: Collection[int] = (),
        diverse_slots: Collection[int] = (),
    ) -> None:
        self.exploration = exploration
        self.explore_slots = frozenset(explore_slots)
        self.diverse_slots = frozenset(diverse_slots)

    @property
    def model_version(self) -> int:
        """The VW model version behind the scores; 0 for policies without one."""
        return 0

    def scores(self, store: ItemStore, query: Query, dynamic: np.ndarray) -> np.ndarray:
        """One score per candidate, in candidate order; ``dynamic``: their popularity and age
        bands now (``Catalog.dynamic_codes``), which the decision logs."""
        raise NotImplementedError

    def slate(
        self,
        store: ItemStore,
        query: Query,
        k: int,
        rng: np.random.Generator,
        shaping: Shaping | None = None,
    ) -> Slate:
        """The policy's slate of ``k``, shaped by merchandising rules and rotation if given
        (its pinned slots must lie within the slate: ``merchandising.RuleBook.shape``)."""
        catalog, candidates = store.catalog, query.candidates
        version = self.model_version  # read before scoring: a swap mid-request cannot mix
        revs = catalog.rev[candidates.keys]
        dynamic = catalog.dynamic_codes(candidates.keys, time.time())
        scores = self.scores(store, query, dynamic)
        kinds = layout(min(k, len(candidates)), self.explore_slots, self.diverse_slots)
        shaped = scores
        if shaping is not None:
            kinds = shaped_layout(kinds, shaping.pinned, shaping.promoted)
            shaped = shaping.scores(scores)
        picks = build_slate(
            shaped,
            catalog.category[candidates.keys],
            (candidates.flags & FRESH) != 0,
            kinds,
            self.exploration,
            rng,
            shaping.pinned if shaping else None,
            shaping.promotable if shaping else None,
        )
        return Slate(
            self.name,
            version,
            query.shared,
            candidates,
            revs,
            dynamic,
            scores,
            kinds,
            self.exploration,
            picks,
            shaping,
        )

    def logged_scores(self, chunk: Chunk, revisions: Revisions) -> np.ndarray:
        """Its scores of each logged decision's candidates, (decisions, candidates). A policy
        that reads what the log does not keep (the session vector) cannot be replayed."""
        raise InvalidInput(f"policy {self.name!r}: replay cannot recompute it", field="policy")

    def logged_pmfs(
        self,
        kinds: np.ndarray,
        allowed: np.ndarray,
        scores: np.ndarray,
        fresh: np.ndarray,
        novel: np.ndarray,
        exploration: Exploration,
        promotable: np.ndarray | None = None,
    ) -> np.ndarray:
        """Row-wise slot pmfs over logged slots: the slate builder with the decisions' own
        layout letters (``kinds``) and ``exploration``, as serving fills them."""
        return slot_pmfs(kinds, allowed, scores, fresh, novel, exploration, promotable)[1]

    def config(self) -> dict[str, Any]:
        """What ``dump`` writes besides the spec (subclasses add their own state)."""
        return {
            "spec": self.name,
            "exploration": self.exploration.to_log(),
            "explore_slots": sorted(self.explore_slots),
            "diverse_slots": sorted(self.diverse_slots),
        }

    def dump(self) -> bytes:
        """Everything needed to make the same slates again; read by ``specs.load_policy``."""
        return pack(self.config())


def rule_marks(candidates: int, shaping: Shaping) -> np.ndarray | None:
    """Which candidates the rules pinned and which a promotion matched (None if neither)."""
    if not shaping.pinned and shaping.promotable is None:
        return None
    marks = np.zeros(candidates, dtype=np.uint8)
    if shaping.promotable is not None:
        marks = shaping.promotable.astype(np.uint8) * np.uint8(PROMOTABLE_MARK)
    marks[list(shaping.pinned.values())] |= PINNED_MARK
    return marks


def min_max(scores: np.ndarray) -> np.ndarray:
    """Scores rescaled to [0, 1] over the candidates (all 0 when they are equal)."""
    if len(scores) == 0:
        return scores.astype(np.float64)
    low, span = float(scores.min()), float(np.ptp(scores))
    if span == 0.0:
        return np.zeros(len(scores))
    return (scores - low) / span
