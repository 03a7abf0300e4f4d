"""The slate builder: fills slots 0..k-1 in order and knows the exact probability of each pick.

Slot kinds:
    exploit   the exploration pmf (epsilon-greedy, SquareCB or softmax) over what is left
    explore   uniform over what is left of the fresh candidates (all that is left if none are)
    diverse   the exploit pmf over what is left outside the categories already in the slate
              (all that is left if every category is taken)
    pinned    a merchandising rule's item, placed with probability 1
    promoted  the exploit pmf over what is left of the promotable candidates (all that is
              left if none are)

Slot j samples from its pmf over the candidates still allowed after slots 0..j-1 (pinned
candidates are never allowed elsewhere); the logged propensity is that pmf's value at the pick,
which is the probability the builder placed that item in that slot given the context and the
earlier slots (DESIGN.md invariant 1). Everything the pmfs depend on (scores and the rules'
shifts of them, categories, fresh, pinned and promotable flags, layout, exploration
parameters) is logged, so replay can recompute them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from slatebandit.bandit.exploration import Exploration

EXPLOIT, EXPLORE, DIVERSE = "exploit", "explore", "diverse"
PINNED, PROMOTED = "pinned", "promoted"
LAYOUT_CODES = {EXPLOIT: "e", EXPLORE: "x", DIVERSE: "d", PINNED: "p", PROMOTED: "m"}


SPREAD_FLOOR = 1e-6  # the spread of a slate whose scores are all equal (an untrained model)


@dataclass(frozen=True)
class Shaping:
    """What merchandising rules and rotation do to one slate (``slatebandit.merchandising``),
    over its candidates.

    A score's ``shift`` is in units of the slate's spread (its best score minus its worst, at
    least ``SPREAD_FLOOR``), so a weight means the same whatever the model's scale, and equal
    scores (an untrained model's) are ordered by their shifts.
    """

    shift: np.ndarray | None = None  # float32 per candidate
    pinned: Mapping[int, int] = field(default_factory=dict)  # slot -> candidate
    promotable: np.ndarray | None = None  # bool per candidate: may fill a promoted slot
    promoted: int = 0  # slots reserved for promotable candidates
    rules: int = 0  # the rule set in force (its ``rule_versions`` id); 0: no rules

    def scores(self, scores: np.ndarray) -> np.ndarray:
        """``scores`` as the slate builder sees them: shifted by the rules and rotation."""
        if self.shift is None or len(scores) == 0:
            return scores
        spread = max(float(np.ptp(scores)), SPREAD_FLOOR)
        return scores + self.shift.astype(np.float64) * spread


def shifted_rows(scores: np.ndarray, shift: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``Shaping.scores`` row-wise over replay's padded (decisions, candidates) arrays."""
    high = np.where(valid, scores, -np.inf).max(axis=1, keepdims=True, initial=-np.inf)
    low = np.where(valid, scores, np.inf).min(axis=1, keepdims=True, initial=np.inf)
    spread = np.maximum(np.where(valid.any(axis=1, keepdims=True), high - low, 0.0), SPREAD_FLOOR)
    return scores + shift * spread


@dataclass(frozen=True)
class Pick:
    index: int  # into the candidate arrays
    propensity: float
    kind: str


def layout(k: int, explore_slots: Collection[int], diverse_slots: Collection[int]) -> list[str]:
    return [
        EXPLORE if j in explore_slots else DIVERSE if j in diverse_slots else EXPLOIT
        for j in range(k)
    ]


def shaped_layout(kinds: list[str], pinned: Collection[int], promoted: int) -> list[str]:
    """``kinds`` with the ``pinned`` slots and ``promoted`` promoted ones laid in.

    Promoted slots are spread evenly over the slots not pinned, at the middle of each of
    ``promoted`` equal runs (k=10, two of them: slots 2 and 7), so the first slot stays the
    policy's and promotions do not bunch.
    """
    kinds = [PINNED if j in pinned else kind for j, kind in enumerate(kinds)]
    free = [j for j, kind in enumerate(kinds) if kind != PINNED]
    promoted = min(promoted, len(free))
    for i in range(promoted):
        kinds[free[(2 * i + 1) * len(free) // (2 * promoted)]] = PROMOTED
    return kinds


def slot_pmf(
    kind: str,
    allowed: np.ndarray,
    scores: np.ndarray,
    fresh: np.ndarray,
    novel: np.ndarray,
    exploration: Exploration,
    promotable: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The candidates a slot may pick from and its pmf over them.

    ``allowed``: not shown in an earlier slot; ``fresh``: proposed by the fresh generator;
    ``novel``: of a category not yet in the slate; ``promotable``: a promotion's match (all
    boolean masks over the candidates).
    """
    pool = allowed
    if kind == EXPLORE:
        pool = allowed & fresh
        indices = np.flatnonzero(pool if pool.any() else allowed)
        return indices, np.full(len(indices), 1.0 / len(indices))
    if kind == DIVERSE or (kind == PROMOTED and promotable is not None):
        pool = allowed & (novel if kind == DIVERSE else promotable)
        if not pool.any():
            pool = allowed
    indices = np.flatnonzero(pool)
    return indices, exploration.pmf(scores[indices])


def slot_pools(
    kinds: np.ndarray,
    allowed: np.ndarray,
    fresh: np.ndarray,
    novel: np.ndarray,
    promotable: np.ndarray | None = None,
) -> np.ndarray:
    """Row-wise, the candidates each slot may pick from.

    ``kinds``: one layout letter per row (``LAYOUT_CODES``); ``allowed``: not shown in an
    earlier slot; ``fresh``: proposed by the fresh generator; ``novel``: of a category not yet
    in the slate; ``promotable``: a promotion's match (boolean masks, one row per slot). A
    pinned slot's row allows its item alone, so every pmf gives it 1.
    """
    narrowed = allowed.copy()
    for kind, pool in ((EXPLORE, fresh), (DIVERSE, novel), (PROMOTED, promotable)):
        rows = np.flatnonzero(kinds == LAYOUT_CODES[kind])
        if pool is not None and len(rows):  # only these rows narrow: the others keep allowed
            here = allowed[rows] & pool[rows]
            empty = ~here.any(axis=1)
            here[empty] = allowed[rows[empty]]
            narrowed[rows] = here
    return narrowed


def slot_pmfs(
    kinds: np.ndarray,
    allowed: np.ndarray,
    scores: np.ndarray,
    fresh: np.ndarray,
    novel: np.ndarray,
    exploration: Exploration,
    promotable: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise pools (``slot_pools``) and each slot's pmf over its pool (zero elsewhere).

    The row-wise form of ``slot_pmf`` (which serving uses, one slot at a time): replay
    recomputes many logged slots at once. A test keeps the two equal.
    """
    pools = slot_pools(kinds, allowed, fresh, novel, promotable)
    pmf = exploration.pmf_rows(scores, pools)
    explore = kinds == "x"
    if explore.any():
        uniform = pools[explore].astype(np.float64)
        pmf[explore] = uniform / uniform.sum(axis=1, keepdims=True)
    return pools, pmf


def build_slate(
    scores: np.ndarray,
    categories: np.ndarray,
    fresh: np.ndarray,
    kinds: list[str],
    exploration: Exploration,
    rng: np.random.Generator,
    pinned: Mapping[int, int] | None = None,
    promotable: np.ndarray | None = None,
) -> list[Pick]:
    """Fill ``min(len(kinds), len(scores))`` slots; ``categories``, ``fresh`` and
    ``promotable`` align with scores; ``pinned`` maps each pinned slot (kind ``pinned``, all
    within the slate) to its candidate."""
    pinned = pinned or {}
    allowed = np.ones(len(scores), dtype=bool)
    allowed[list(pinned.values())] = False
    novel = np.ones(len(scores), dtype=bool)
    picks = []
    for j, kind in enumerate(kinds[: len(scores)]):
        if kind == PINNED:
            pick = Pick(pinned[j], 1.0, kind)
        else:
            indices, pmf = slot_pmf(kind, allowed, scores, fresh, novel, exploration, promotable)
            choice = sample(pmf, rng)
            pick = Pick(int(indices[choice]), float(pmf[choice]), kind)
        picks.append(pick)
        allowed[pick.index] = False
        novel &= categories != categories[pick.index]
    return picks


def sample(pmf: np.ndarray, rng: np.random.Generator) -> int:
    """An index drawn from ``pmf``; never one of probability zero, even at float edges."""
    cdf = np.cumsum(pmf)
    pick = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    # Below the last entry a pick always has probability > 0 (its cdf step is > 0); only
    # past the end, at float edges, does it need moving back to the last possible entry.
    if pick < len(pmf) - 1 or (pick == len(pmf) - 1 and pmf[pick] > 0):
        return pick
    return int(np.flatnonzero(pmf)[-1])
