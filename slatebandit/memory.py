"""What a serving worker's caches hold: entries and approximate bytes, cache by cache.

Every cache a worker keeps between requests is bounded (each limit stands beside its cache),
so its memory rises while they fill and then stays. They fill at the pace of the traffic
that feeds them (a neighbour list per item a shopper looks at, a session search per shopper
action), some over tens of minutes, which a soak's RSS alone cannot tell from a leak.
``/metrics`` shows them (``slatebandit_worker_cache_bytes``) and ``benchmarks/soak.py``
reports them by minute beside the RSS.

Bytes are estimated from a sample of entries, walked through their containers, times the
entry count: 2 to 3 ms for all of a worker's caches every 30 s (on a thread, so the event
loop takes the GIL back every switch interval), where walking every entry would take
seconds. An object shared between entries (an interned string, a small int) is counted once
per entry that holds it, so the figure leans high.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

import numpy as np

SAMPLE = 16  # entries walked for an estimate

K = TypeVar("K")
V = TypeVar("V")


class FirstInFirstOut(OrderedDict[K, V]):
    """A cache of at most ``limit`` entries: keeping one past it drops the oldest.

    A full cache turns over an entry at a time. Cleared whole instead, it froze the event
    loop while 50,000 arrays were freed (7 ms, measured), and every request missed at once
    while it filled again."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def keep(self, key: K, value: V) -> V:
        if key not in self and len(self) >= self.limit:
            self.popitem(last=False)
        self[key] = value
        return value


class Held(NamedTuple):
    """A cache's entries and its approximate bytes."""

    entries: int
    bytes: int

    @staticmethod
    def total(parts: Iterable[Held]) -> Held:
        """Several caches' holdings as one."""
        parts = list(parts)
        return Held(sum(p.entries for p in parts), sum(p.bytes for p in parts))


def held(entries: Mapping[Any, Any], sample: int = SAMPLE) -> Held:
    """``entries``' count and approximate bytes: the mapping itself, and the mean size of its
    first ``sample`` keys and values times their count."""
    for _ in range(3):  # the event loop may change a cache as this walks it, from its thread
        try:
            walked = list(itertools.islice(entries.items(), sample))
            mean = sum(deep_bytes(pair) for pair in walked) / len(walked) if walked else 0.0
            break
        except RuntimeError:  # "changed size during iteration": walk again
            continue
    else:
        mean = 0.0
    count = len(entries)
    return Held(count, sys.getsizeof(entries) + round(mean * count))


def deep_bytes(obj: object, seen: set[int] | None = None) -> int:
    """``obj``'s size with what it holds: containers, dataclasses and numpy arrays. An array
    that views another counts the bytes it views: a search's answer for several items is one
    array, and each item's row, kept apart, views its share of it."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        if obj.base is not None:
            return sys.getsizeof(obj) + obj.nbytes
        return sys.getsizeof(obj)  # an array that owns its data counts it
    size = sys.getsizeof(obj)
    if isinstance(obj, Mapping):
        size += sum(deep_bytes(k, seen) + deep_bytes(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set | frozenset):
        size += sum(deep_bytes(item, seen) for item in obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        size += sum(deep_bytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    return size
