"""The slate builder: fills slots 0..k-1 in order and knows the exact probability of each pick.

Slot kinds:
    exploit  the exploration pmf (epsilon-greedy, SquareCB or softmax) over what is left
    explore  uniform over what is left of the fresh candidates (all that is left if none are)
    diverse  the exploit pmf over what is left outside the categories already in the slate
             (all that is left if every category is taken)

Slot j samples from its pmf over the candidates still allowed after slots 0..j-1; the logged
propensity is that pmf's value at the pick, which is the probability the builder placed that
item in that slot given the context and the earlier slots (DESIGN.md invariant 1). Everything
the pmfs depend on (scores, categories, fresh flags, layout, exploration parameters) is logged,
so replay can recompute them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from slatebandit.bandit.exploration import Exploration

EXPLOIT, EXPLORE, DIVERSE = "exploit", "explore", "diverse"
LAYOUT_CODES = {EXPLOIT: "e", EXPLORE: "x", DIVERSE: "d"}


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


def slot_pmf(
    kind: str,
    allowed: np.ndarray,
    scores: np.ndarray,
    fresh: np.ndarray,
    novel: np.ndarray,
    exploration: Exploration,
) -> tuple[np.ndarray, np.ndarray]:
    """The candidates a slot may pick from and its pmf over them.

    ``allowed``: not shown in an earlier slot; ``fresh``: proposed by the fresh generator;
    ``novel``: of a category not yet in the slate (all boolean masks over the candidates).
    """
    pool = allowed
    if kind == EXPLORE:
        pool = allowed & fresh
        indices = np.flatnonzero(pool if pool.any() else allowed)
        return indices, np.full(len(indices), 1.0 / len(indices))
    if kind == DIVERSE:
        pool = allowed & novel
        if not pool.any():
            pool = allowed
    indices = np.flatnonzero(pool)
    return indices, exploration.pmf(scores[indices])


def slot_pools(
    kinds: np.ndarray, allowed: np.ndarray, fresh: np.ndarray, novel: np.ndarray
) -> np.ndarray:
    """Row-wise, the candidates each slot may pick from.

    ``kinds``: one layout letter per row (``LAYOUT_CODES``); ``allowed``: not shown in an
    earlier slot; ``fresh``: proposed by the fresh generator; ``novel``: of a category not yet
    in the slate (boolean masks, one row per slot).
    """
    kinds = kinds[:, None]
    narrowed = allowed & np.where(kinds == "x", fresh, np.where(kinds == "d", novel, True))
    empty = ~narrowed.any(axis=1)
    narrowed[empty] = allowed[empty]
    return narrowed


def slot_pmfs(
    kinds: np.ndarray,
    allowed: np.ndarray,
    scores: np.ndarray,
    fresh: np.ndarray,
    novel: np.ndarray,
    exploration: Exploration,
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise pools (``slot_pools``) and each slot's pmf over its pool (zero elsewhere).

    The row-wise form of ``slot_pmf`` (which serving uses, one slot at a time): replay
    recomputes many logged slots at once. A test keeps the two equal.
    """
    pools = slot_pools(kinds, allowed, fresh, novel)
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
) -> list[Pick]:
    """Fill ``min(len(kinds), len(scores))`` slots; ``categories``, ``fresh`` align with scores."""
    allowed = np.ones(len(scores), dtype=bool)
    novel = np.ones(len(scores), dtype=bool)
    picks = []
    for kind in kinds[: len(scores)]:
        indices, pmf = slot_pmf(kind, allowed, scores, fresh, novel, exploration)
        choice = sample(pmf, rng)
        index = int(indices[choice])
        picks.append(Pick(index, float(pmf[choice]), kind))
        allowed[index] = False
        novel &= categories != categories[index]
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
