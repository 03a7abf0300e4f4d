"""The worker's garbage collector: every pause timed for ``/metrics``, and what outlives a full
collection frozen, so that the next full collection does not walk it again.

A collection stops the event loop (and every thread: it holds the GIL), so a long one is a
latency spike of every request in flight, with nothing in the requests' own time to say why.
``Recommender.start`` freezes the catalog and the index once (``gc.freeze``), but a full
collection still walks everything serving has kept since: cached shoppers' states, recent
decisions, connections. In ``benchmarks/soak.py`` (5,000 shoppers, 20,000 items) each full
collection paused a worker for 44 to 63 ms, a few times a minute; in process, one that freed
nothing took 20 to 35 ms to walk some 37,000 objects: each visit is a cache miss in a large
heap. With a storefront's 100,000 cached shoppers it would be worse.

So the survivors of each full collection are frozen the moment it ends (``gc.freeze``, in
its "stop" callback, when the young generations are empty): later full collections walk only
what was kept since. A frozen object is still freed by reference counting when a cache drops
it, which is how every cache here lets go (their entries hold no reference cycles). What a
freeze cannot free is a reference cycle among frozen objects that dies later: the frozen
count (``slatebandit_gc_frozen_objects``, summed over the live workers) would then keep
growing with a steady load, and a restart of the worker would give the memory back. In a soak
it held steady (README, Measured).

The callbacks only note each pause: they run wherever an allocation starts a collection, which
may be inside ``prometheus_client`` holding its non-reentrant lock on the shared files (timing
there deadlocked a worker), so ``flush``, on the loop, observes what was noted.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import itertools
import time

from slatebandit.server.metrics import GC_FROZEN, GC_PAUSES

FULL = 2  # the oldest generation: a full collection


class Collector:
    """Times this process's collections and freezes what outlives a full one, while entered."""

    def __init__(self, freeze_survivors: bool = True) -> None:
        self.freeze_survivors = freeze_survivors
        self.pending: collections.deque[tuple[int, float]] = collections.deque(maxlen=10_000)
        self._started = 0.0

    def _noted(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        # A deque's append takes no lock that the interrupted code may hold.
        self.pending.append((info["generation"], time.perf_counter() - self._started))
        if info["generation"] == FULL and self.freeze_survivors:
            gc.freeze()

    def flush(self) -> None:
        """Observe the pauses noted since the last flush."""
        while self.pending:
            generation, seconds = self.pending.popleft()
            GC_PAUSES.labels(str(generation)).observe(seconds)

    def count_frozen(self) -> None:
        """Set the frozen-object gauge. ``gc.get_freeze_count`` walks every frozen object (it
        keeps no count), so this is a pause of its own: 12 to 44 ms once a second in the soak's
        workers (about 300,000 objects scattered over a large heap; py-spy), the longest stall
        of their event loops. It is counted once a minute."""
        GC_FROZEN.set(gc.get_freeze_count())

    def __enter__(self) -> Collector:
        gc.callbacks.append(self._noted)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._noted)
        self.flush()


async def tend_collector(every: float = 1.0, count_every: int = 60) -> None:
    """A worker's ``Collector`` until cancelled: its pauses flushed each ``every`` seconds, the
    frozen objects counted every ``count_every`` flushes (the first one included)."""
    with Collector() as collector:
        for flushes in itertools.count():
            await asyncio.sleep(every)
            collector.flush()
            if flushes % count_every == 0:
                collector.count_frozen()
