"""The worker's garbage collector (``server/collector.py``): pauses timed by generation, what
outlives a full collection frozen, and no deadlock when a collection starts inside
``prometheus_client``'s locks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from slatebandit.server.collector import Collector, tend_collector
from slatebandit.server.metrics import GC_FROZEN, GC_PAUSES


def full_collections() -> float:
    return sum(
        sample.value
        for metric in GC_PAUSES.collect()
        for sample in metric.samples
        if sample.name.endswith("_count") and sample.labels["generation"] == "2"
    )


@pytest.fixture
def collections_asked_only() -> Iterator[None]:
    """Only the collections a test asks for, none the allocator starts; nothing left frozen."""
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()


@pytest.mark.usefixtures("collections_asked_only")
def test_pauses_are_noted_then_observed_by_generation_until_exit() -> None:
    before = full_collections()
    with Collector(freeze_survivors=False) as collector:
        gc.collect()
        gc.collect(0)
        gc.collect()
        assert [generation for generation, _ in collector.pending] == [2, 0, 2]
        assert full_collections() == before  # noted only: observed from the loop
        collector.flush()
        assert full_collections() == before + 2 and not collector.pending
        gc.collect()
    assert full_collections() == before + 3  # flushed on the way out
    gc.collect()  # after it: not timed
    assert full_collections() == before + 3


@pytest.mark.usefixtures("collections_asked_only")
def test_what_outlives_a_full_collection_is_frozen_and_still_freed_by_reference() -> None:
    gc.unfreeze()
    kept = [[n] for n in range(1000)]  # a cache's entries: containers the collector tracks
    with Collector() as collector:
        gc.collect(1)
        assert gc.get_freeze_count() == 0  # a younger generation's survivors stay walked
        gc.collect()
        frozen = gc.get_freeze_count()
        assert frozen >= len(kept)
        assert not any(entry is kept[0] for entry in gc.get_objects())  # no longer walked
        collector.count_frozen()
        assert frozen - 100 <= _gauge() <= frozen  # what the count found frozen
    del kept  # a cache dropping its entries: reference counting frees them, frozen or not
    assert gc.get_freeze_count() <= frozen - 1000


@pytest.mark.usefixtures("collections_asked_only")
def test_a_collection_while_the_histogram_is_locked_does_not_deadlock() -> None:
    """The callback must not take prometheus_client's locks: a collection can start while the
    same thread holds one (a worker hung so, creating a labelled child in the shared files)."""
    children = [GC_PAUSES.labels(str(generation)) for generation in range(3)]
    locks = [child._sum._lock for child in children]  # type: ignore[attr-defined]
    collected = threading.Event()

    def collect_holding_the_locks() -> None:
        with Collector(freeze_survivors=False), ExitStack() as held:
            for lock in locks:
                held.enter_context(lock)
            gc.collect()  # the callbacks run here, with every lock held by this thread
            collected.set()

    thread = threading.Thread(target=collect_holding_the_locks, daemon=True)
    thread.start()
    assert collected.wait(60), "the collection's callback waited for a lock its thread holds"
    thread.join()


def _gauge() -> float:
    return sum(sample.value for metric in GC_FROZEN.collect() for sample in metric.samples)


def test_a_worker_times_its_collections_while_it_serves_and_stops_after(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from slatebandit.server import create_app
    from tests.conftest import make_settings

    def collectors() -> list[object]:
        return [c for c in gc.callbacks if isinstance(getattr(c, "__self__", None), Collector)]

    assert not collectors()
    with TestClient(create_app(make_settings(tmp_path))) as client:
        assert client.get("/healthz").status_code == 200
        assert len(collectors()) == 1
    assert not collectors()


def test_the_frozen_objects_are_counted_on_the_first_flush_then_every_count_every(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counting walks every frozen object (a pause of its own), so the tending task counts
    only every ``count_every`` flushes, while it flushes the pauses each time."""
    done: list[str] = []
    monkeypatch.setattr(Collector, "flush", lambda self: done.append("flush"))
    monkeypatch.setattr(Collector, "count_frozen", lambda self: done.append("count"))

    async def tend_for_seven_flushes() -> None:
        task = asyncio.create_task(tend_collector(every=0, count_every=3))
        while len(done) < 10:
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(tend_for_seven_flushes())
    f, c = "flush", "count"
    assert done[:10] == [f, c, f, f, f, c, f, f, f, c]
