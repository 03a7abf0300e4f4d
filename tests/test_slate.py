"""The propensity invariant and the exploration pmfs."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
from scipy import stats

from slatebandit.bandit import (
    DIVERSE,
    EXPLOIT,
    EXPLORE,
    PINNED,
    PROMOTED,
    Exploration,
    Shaping,
    build_slate,
    epsilon_greedy,
    slot_pmf,
    slot_pmfs,
    softmax,
    squarecb,
)


@pytest.mark.parametrize(
    "pmf",
    [
        lambda s: epsilon_greedy(s, 0.1),
        lambda s: squarecb(s, 50.0),
        lambda s: softmax(s, 0.05),
    ],
    ids=["epsilon", "squarecb", "softmax"],
)
def test_pmfs_are_distributions_with_full_support(pmf) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 200):
        scores = rng.normal(size=n)
        p = pmf(scores)
        assert p.shape == (n,)
        assert np.all(p > 0)
        assert p.sum() == pytest.approx(1.0)
        assert int(np.argmax(p)) == int(np.argmax(scores))


def test_ties_go_to_retrieval_order() -> None:
    p = epsilon_greedy(np.zeros(5), 0.1)
    assert int(np.argmax(p)) == 0


RULES = {  # every rule type: pinned slot 1, promoted slot 3, boosts and buries, a block
    "pinned": {1: 4},
    "promotable": np.array([0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0], dtype=bool),
    "shift": np.array([0, 0.5, 0, -0.8, 0, 0, 0.3, 0, 0, 0, 0, -0.2]),
    "kinds": [EXPLOIT, PINNED, EXPLORE, PROMOTED, DIVERSE, EXPLOIT],
}


@pytest.mark.parametrize("rules", [False, True], ids=["plain", "rules"])
@pytest.mark.parametrize("kind", ["epsilon", "squarecb", "softmax"])
def test_logged_propensities_match_sampling_frequencies(kind: str, rules: bool) -> None:
    """Invariant 1: for a fixed context, each slot's empirical frequencies, given the earlier
    slots, match the logged propensities (chi-square, p > 0.001), over 20,000 seeded draws;
    with merchandising rules too (a pinned slot, a promoted one, shifted scores; a blocked item
    is simply not a candidate)."""
    n, draws = 12, 20_000
    data = np.random.default_rng(42)
    scores = data.normal(0, 0.05, size=n)
    categories = np.array([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3])
    fresh = np.zeros(n, dtype=bool)
    fresh[[9, 10, 11]] = True
    kinds = [EXPLOIT, EXPLORE, DIVERSE, EXPLOIT]
    pinned, promotable = None, None
    if rules:
        kinds, pinned, promotable = RULES["kinds"], RULES["pinned"], RULES["promotable"]
        scores = Shaping(RULES["shift"]).scores(scores)
    exploration = Exploration(kind, epsilon=0.3, gamma=20.0, temperature=0.05)
    rng = np.random.default_rng(7)

    # (slot, prefix) -> Counter of picks, and the propensity logged for each pick
    picked: dict[tuple[int, tuple[int, ...]], Counter[int]] = defaultdict(Counter)
    logged: dict[tuple[int, tuple[int, ...], int], float] = {}
    for _ in range(draws):
        slate = build_slate(scores, categories, fresh, kinds, exploration, rng, pinned, promotable)
        prefix: tuple[int, ...] = ()
        for j, pick in enumerate(slate):
            assert pick.kind == kinds[j] and 0 < pick.propensity <= 1
            if pick.kind == PINNED:
                assert (pick.index, pick.propensity) == (4, 1.0)
            if pick.kind == PROMOTED:  # while promotable items are left, only they
                assert promotable is not None and promotable[pick.index]
            assert not rules or pick.kind == PINNED or pick.index != 4  # pinned: nowhere else
            key = (j, prefix, pick.index)
            # The same item after the same prefix is always logged with the same probability.
            assert logged.setdefault(key, pick.propensity) == pytest.approx(pick.propensity)
            picked[(j, prefix)][pick.index] += 1
            prefix = (*prefix, pick.index)

    tested = 0
    for (j, prefix), counts in picked.items():
        total = sum(counts.values())
        if total < 500:
            continue  # too few draws of this prefix for a chi-square test
        probs = {i: logged[(j, prefix, i)] for i in counts}
        unseen = 1.0 - sum(probs.values())  # mass on items this prefix never drew
        observed, expected = [], []
        small_obs = small_exp = 0.0
        for i, c in counts.items():
            if probs[i] * total >= 5:
                observed.append(c)
                expected.append(probs[i] * total)
            else:
                small_obs += c
                small_exp += probs[i] * total
        small_exp += max(unseen, 0.0) * total
        if small_exp >= 5:
            observed.append(small_obs)
            expected.append(small_exp)
        elif expected:
            expected[-1] += small_exp
            observed[-1] += small_obs
        if len(observed) < 2:
            continue
        _, p_value = stats.chisquare(observed, np.asarray(expected) * sum(observed) / sum(expected))
        assert p_value > 0.001, (j, prefix, observed, expected)
        tested += 1
    assert tested >= 4  # every slot kind got tested at least for its most common prefix


def test_explore_and_diverse_slots_respect_their_pools() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.0])
    categories = np.array([0, 0, 0, 1, 2])
    fresh = np.array([False, False, False, False, True])
    rng = np.random.default_rng(3)
    greedy = Exploration("epsilon", epsilon=1e-9)
    for _ in range(200):
        slate = build_slate(scores, categories, fresh, [EXPLOIT, DIVERSE, EXPLORE], greedy, rng)
        first, diverse, explore = (p.index for p in slate)
        assert first == 0
        assert diverse in (3, 4)  # only items of a category not yet in the slate
        if diverse == 3:
            assert (explore, slate[2].propensity) == (4, 1.0)  # the one fresh item
        else:  # no fresh item left: uniform over the rest
            assert explore in (1, 2, 3) and slate[2].propensity == pytest.approx(1 / 3)


def test_short_candidate_lists_fill_what_they_can() -> None:
    slate = build_slate(
        np.zeros(2),
        np.zeros(2, int),
        np.zeros(2, bool),
        [EXPLOIT] * 5,
        Exploration(),
        np.random.default_rng(0),
    )
    assert sorted(p.index for p in slate) == [0, 1]


@pytest.mark.parametrize("kind", ["epsilon", "squarecb", "softmax"])
def test_row_pmfs_equal_the_pmfs_serving_uses(kind: str) -> None:
    """Replay recomputes logged slots with ``slot_pmfs`` (row-wise); serving builds them with
    ``slot_pmf``. Over random masks, kinds and scores (ties included) the two agree."""
    rng = np.random.default_rng(11)
    exploration = Exploration(kind, epsilon=0.2, gamma=30.0, temperature=0.07)
    rows, n = 300, 25
    scores = np.round(rng.normal(size=(rows, n)), 1)  # rounding makes ties common
    allowed = rng.random((rows, n)) < 0.7
    allowed[:, 0] = True
    fresh = rng.random((rows, n)) < 0.2
    novel = rng.random((rows, n)) < 0.5
    promotable = rng.random((rows, n)) < 0.3
    kinds = rng.choice(np.array(["e", "x", "d", "m"]), size=rows)
    pools, pmf = slot_pmfs(kinds, allowed, scores, fresh, novel, exploration, promotable)
    names = {"e": EXPLOIT, "x": EXPLORE, "d": DIVERSE, "m": PROMOTED}
    for r in range(rows):
        indices, p = slot_pmf(
            names[kinds[r]],
            allowed[r],
            scores[r],
            fresh[r],
            novel[r],
            exploration,
            promotable[r],
        )
        assert np.array_equal(np.flatnonzero(pools[r]), indices)
        assert np.allclose(pmf[r, indices], p, rtol=1e-12, atol=0)
        assert pmf[r, ~pools[r]].sum() == 0


def test_a_draw_past_the_end_lands_on_the_last_possible_entry() -> None:
    """At float edges u * cdf[-1] can reach the end of the cdf: the pick moves back to the last
    entry of positive probability, never to one of probability zero."""
    from slatebandit.bandit.slate import sample

    class Edge:  # a draw whose product with cdf[-1] rounds to cdf[-1] itself
        def random(self) -> float:
            return 1.0

    pmf = np.array([0.25, 0.75, 0.0, 0.0])
    assert sample(pmf, Edge()) == 1  # type: ignore[arg-type]
    assert sample(np.array([0.5, 0.5]), Edge()) == 1  # type: ignore[arg-type]
    rng = np.random.default_rng(5)
    draws = [sample(pmf, rng) for _ in range(2000)]
    assert set(draws) == {0, 1}


def test_shifts_are_shares_of_the_spread_and_order_equal_scores() -> None:
    """A shift of 1 lifts the worst score level with the best, whatever the scale; equal
    scores (an untrained model) are ordered by their shifts alone; replay's row-wise form
    gives the same numbers."""
    from slatebandit.bandit import shifted_rows

    scores = np.array([3.0, 1.0, 2.0])
    shift = np.array([0.0, 1.0, -0.5], dtype=np.float32)
    assert np.array_equal(Shaping(shift).scores(scores), [3.0, 3.0, 1.0])
    assert np.array_equal(Shaping(shift).scores(scores * 100), [300.0, 300.0, 100.0])
    tied = Shaping(shift).scores(np.zeros(3))
    assert list(np.argsort(-tied, kind="stable")) == [1, 0, 2]
    rows = np.array([[3.0, 1.0, 2.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    valid = np.array([[True, True, True, False], [True, True, True, False]])
    padded = np.array([[*shift, 0.0], [*shift, 0.0]], dtype=np.float64)
    assert np.array_equal(
        shifted_rows(rows, padded, valid)[0, :3], Shaping(shift).scores(rows[0, :3])
    )
    assert np.array_equal(shifted_rows(rows, padded, valid)[1, :3], tied)


def test_promoted_slots_spread_over_the_slots_not_pinned() -> None:
    from slatebandit.bandit import shaped_layout

    kinds = [EXPLOIT] * 10
    assert [j for j, k in enumerate(shaped_layout(kinds, {}, 2)) if k == PROMOTED] == [2, 7]
    laid = shaped_layout(kinds, {0: 5, 1: 6}, 1)
    assert laid[:2] == [PINNED, PINNED] and laid.index(PROMOTED) == 6
    assert shaped_layout(kinds[:3], {0: 1, 1: 2, 2: 3}, 2) == [PINNED] * 3  # no slot left
