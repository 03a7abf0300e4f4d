"""What a worker's caches hold (``slatebandit/memory.py``): the estimate, each cache's count,
and the gauges ``/metrics`` shows them by."""

from __future__ import annotations

import asyncio
import sys
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from prometheus_client import REGISTRY

from slatebandit.config import Settings
from slatebandit.memory import SAMPLE, FirstInFirstOut, Held, deep_bytes, held
from slatebandit.recommender import Recommender, SlateQuery
from slatebandit.recommender.background import count_caches


@dataclass(frozen=True)
class Entry:
    keys: tuple[int, ...]
    name: str


def test_deep_bytes_walks_containers_dataclasses_and_arrays_once() -> None:
    row = np.zeros(100, dtype=np.int64)
    assert deep_bytes(row) == sys.getsizeof(row) >= 800  # an array counts the data it owns
    rows = np.zeros((4, 100), dtype=np.int64)
    assert deep_bytes(rows[1]) == sys.getsizeof(rows[1]) + 800  # a view, its share
    assert deep_bytes(list(rows)) == sys.getsizeof(list(rows)) + 4 * (sys.getsizeof(rows[0]) + 800)
    entry = Entry((1, 2, 3), "shopper")
    expected = (
        sys.getsizeof(entry)
        + sys.getsizeof(entry.keys)
        + sum(sys.getsizeof(k) for k in entry.keys)
        + sys.getsizeof(entry.name)
    )
    assert deep_bytes(entry) == expected
    shared = [row, row]  # held twice, counted once
    assert deep_bytes(shared) == sys.getsizeof(shared) + sys.getsizeof(row)


def test_held_is_the_sampled_mean_times_the_count() -> None:
    same = {f"k{i:04d}": np.zeros(10, dtype=np.int64) for i in range(1_000)}
    one = deep_bytes(("k0000", same["k0000"]))
    assert held(same) == Held(1_000, sys.getsizeof(same) + 1_000 * one)
    assert held({}) == Held(0, sys.getsizeof({}))
    # The first entries stand for the rest: an estimate, exact when entries are alike.
    mixed = OrderedDict((i, np.zeros(10 if i < SAMPLE else 1_000)) for i in range(64))
    assert held(mixed).bytes < deep_bytes(mixed)


def test_a_worker_counts_each_cache_and_the_gauges_show_them(settings: Settings) -> None:
    async def run() -> dict[str, Held]:
        recommender = await Recommender.open(settings)
        await recommender.start()
        try:
            for i in range(12):
                decision = await recommender.decide(SlateQuery(f"u{i % 4}", k=5))
                if i < 4:  # a shopper with a stored state has it cached
                    item = str(decision.items[0]["item_id"])
                    await recommender.event(f"u{i}", item, "view")
            count_caches(recommender)
            return recommender.memory()
        finally:
            await recommender.close()

    memory = asyncio.run(run())
    assert set(memory) == {
        "shoppers",
        "decisions",
        "neighbours",
        "strings",
        "rotation",
        "bought_together",
        "filter_masks",
    }
    assert memory["decisions"].entries == 12  # every slate, kept for its rewards
    assert memory["shoppers"].entries == 4
    assert memory["rotation"].entries == 4  # each shopper's impressions
    assert memory["strings"].entries > 0  # candidates' feature strings, decoded
    for name, (entries, size) in memory.items():
        assert size >= 0 and (entries == 0 or size > 100 * entries), name
        gauge = REGISTRY.get_sample_value("slatebandit_worker_cache_entries", {"cache": name})
        assert gauge == entries, name
        measured = REGISTRY.get_sample_value("slatebandit_worker_cache_bytes", {"cache": name})
        assert measured == size, name


def test_first_in_first_out_keeps_its_limit_and_drops_the_oldest() -> None:
    cache: FirstInFirstOut[str, int] = FirstInFirstOut(3)
    for n, key in enumerate("abcd"):
        assert cache.keep(key, n) == n
    assert list(cache.items()) == [("b", 1), ("c", 2), ("d", 3)]
    cache.keep("c", 20)  # a key it holds is replaced in place: nothing else goes
    assert list(cache.items()) == [("b", 1), ("c", 20), ("d", 3)]
    cache.keep("e", 4)
    assert list(cache) == ["c", "d", "e"] and len(cache) == cache.limit
    assert held(cache).entries == 3
