"""Merging generator lists; the in-memory catalog's fresh pool and popularity."""

from __future__ import annotations

import numpy as np

from slatebandit.retrieval import FRESH, POPULAR, SIMILAR, SOURCES, Catalog
from slatebandit.retrieval.candidates import merge


def _a(*keys: int) -> np.ndarray:
    return np.asarray(keys, dtype=np.int64)


def test_merge_is_round_robin_dedupes_filters_and_caps() -> None:
    available = np.ones(20, dtype=bool)
    available[13] = False
    proposals = [
        _a(9, 1, 2, 3),
        _a(),
        _a(2, 13, 4, 5),
        _a(6, 1),
    ]  # similar, session, popular, fresh
    got = merge(proposals, available, blocked={5, 9}, limit=10, shares=(1, 1, 1, 1, 1))
    # Dropped proposals (9 blocked, 13 unavailable) cost their generator nothing: rank 0 is
    # 1, 2, 6; rank 1 is 2 (seen), 4, 1 (seen); rank 2 is 3.
    assert got.keys.tolist() == [1, 2, 6, 4, 3]
    sources = [SOURCES[s] for s in got.sources]
    assert sources == ["similar", "popular", "fresh", "popular", "similar"]
    assert got.flags[0] == SIMILAR | FRESH  # 1 came from similar and fresh
    assert got.flags[1] == SIMILAR | POPULAR
    assert merge(proposals, available, set(), 3, shares=(1, 1, 1, 1, 1)).keys.tolist() == [9, 2, 6]
    assert len(merge([_a()] * 4, available, blocked=set(), limit=5)) == 0


def test_merge_rounds_take_each_generators_share() -> None:
    available = np.ones(40, dtype=bool)
    proposals = [_a(1, 2, 3, 4, 5), _a(11, 12, 13), _a(21, 22), _a(31)]
    got = merge(proposals, available, blocked=set(), limit=20, shares=(3, 2, 1, 1, 1))
    assert got.keys.tolist() == [1, 2, 3, 11, 12, 21, 31, 4, 5, 13, 22]


def test_fresh_pool_takes_newest_and_drops_items_once_shown_enough() -> None:
    catalog = Catalog(fresh_impressions=2)

    class Row:
        def __init__(self, key: int) -> None:
            self.key, self.rev, self.item_id, self.deleted = key, key, f"i{key}", False
            self.category, self.brand, self.price, self.attributes = "a/b", "x", 10.0, {}
            self.title, self.available, self.created_at = "t", True, 0.0

    catalog.apply([Row(k) for k in range(1, 6)])
    assert catalog.fresh_keys(3) == [5, 4, 3]
    catalog.add_impressions(5, 2)
    assert catalog.fresh_keys(3) == [4, 3, 2]
    catalog.bump_popularity(2, 1.0)
    catalog.bump_popularity(3, 3.0)
    catalog.refresh_popular()
    assert catalog.popular[:3].tolist() == [3, 2, 5]  # then ties by newest
    assert catalog.features[3].split()[:2] == ["k3", "c=a"]


def test_dynamic_codes_pack_popularity_and_age_bands() -> None:
    catalog = Catalog()

    class Row:
        def __init__(self, key: int, created_at: float) -> None:
            self.key, self.rev, self.item_id, self.deleted = key, key, f"i{key}", False
            self.category, self.brand, self.price, self.attributes = "a", "x", 1.0, {}
            self.title, self.available, self.created_at = "t", True, created_at

    now = catalog._pop_origin
    catalog.apply([Row(1, now), Row(2, now - 7 * 86_400)])
    for _ in range(7):
        catalog.bump_popularity(2, 1.0, now=now)
    codes = catalog.dynamic_codes(np.array([1, 2]), now=now).tolist()
    assert [code >> 4 for code in codes] == [0, 3]  # untouched; log2(1 + 7)
    assert [code & 15 for code in codes] == [0, 3]  # new; log2(1 + 7 days)
    later = catalog.dynamic_codes(np.array([2]), now=now + 86_400).tolist()[0]
    assert later >> 4 == 2  # a day later the 7 interactions count half: log2(1 + 3.5)


def test_context_rankings_are_reused_until_a_click_and_never_show_a_removed_item() -> None:
    catalog = Catalog()

    class Row:
        def __init__(self, key: int, rev: int, deleted: bool = False) -> None:
            self.key, self.rev, self.item_id, self.deleted = key, rev, f"i{key}", deleted
            self.category, self.brand, self.price, self.attributes = "a", "x", 1.0, {}
            self.title, self.available, self.created_at = "t", True, 0.0

    catalog.apply([Row(k, k) for k in range(1, 6)])
    catalog.bump_context(["device=tablet"], 2, 2.0)
    catalog.bump_context(["device=tablet"], 4, 1.0)
    first = catalog.context_popular(["device=tablet"], 10)
    assert first.tolist() == [2, 4]
    assert catalog.context_popular(["device=tablet"], 10) is not first  # filtered anew...
    assert ("device=tablet",) in catalog._context_rankings  # ...from one cached ranking
    catalog.apply([Row(2, 6, deleted=True)])  # removed: gone at once, cache or not
    assert catalog.context_popular(["device=tablet"], 10).tolist() == [4]
    catalog.bump_context(["device=tablet"], 5, 5.0)  # a click re-ranks the next slate
    assert catalog.context_popular(["device=tablet"], 10).tolist() == [5, 4]


def _merge_by_hand(proposals, available, blocked, limit, shares):  # type: ignore[no-untyped-def]
    """``merge`` as its docstring says it, one key at a time."""
    from slatebandit.retrieval.candidates import PRIORITY

    entries = []  # (round, priority, position, key, generator)
    for g, proposed in enumerate(proposals):
        kept: list[int] = []
        for key in map(int, proposed):
            usable = 0 <= key < len(available) and available[key] and key not in blocked
            if usable and key not in kept:
                kept.append(key)
        entries += [(i // shares[g], PRIORITY[g], i, key, g) for i, key in enumerate(kept)]
    entries.sort(key=lambda entry: entry[:3])
    first: dict[int, tuple[int, int]] = {}
    flags: dict[int, int] = {}
    for i, (*_, key, g) in enumerate(entries):
        flags[key] = flags.get(key, 0) | 1 << g
        first.setdefault(key, (i, g))
    chosen = sorted(first.items(), key=lambda item: item[1][0])[:limit]
    return [k for k, _ in chosen], [flags[k] for k, _ in chosen], [g for _, (_, g) in chosen]


def test_merge_agrees_with_merging_by_hand() -> None:
    rng = np.random.default_rng(11)
    for _ in range(300):
        n = int(rng.integers(1, 60))
        available = rng.random(n) < 0.8
        proposals = [rng.integers(-2, n + 3, size=int(rng.integers(0, 30))) for _ in range(5)]
        blocked = set(rng.integers(0, n, size=int(rng.integers(0, 5))).tolist())
        shares = tuple(int(s) for s in rng.integers(1, 4, size=5))
        limit = int(rng.integers(1, 40))
        got = merge(proposals, available, blocked, limit, shares)
        keys, flags, sources = _merge_by_hand(proposals, available, blocked, limit, shares)
        assert got.keys.tolist() == keys
        assert got.flags.tolist() == flags
        assert got.sources.tolist() == sources
