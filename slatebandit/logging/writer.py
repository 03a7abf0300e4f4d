"""Group commit: concurrent requests share one transaction, and each resumes after the commit.

A *unit* is a function ``unit(connection) -> result`` holding one request's writes, or a
record whose class has ``write_many(connection, records) -> results`` (records of one class in
a batch are then written together, in a few statements). The writer runs the units that are
waiting in one transaction on its own thread, commits once, then resolves every caller. If the
shared transaction fails, each unit is retried alone, so one bad request cannot fail its
neighbours; if the database cannot be reached, every unit fails at once with
``DatabaseUnavailable`` (serving then spools, see ``recommender.outage``). This is what makes "a 2xx
means durable" affordable: one fsync serves the whole batch.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from prometheus_client import Histogram
from sqlalchemy import Connection, Engine

from slatebandit.errors import DatabaseUnavailable
from slatebandit.logging.engine import is_unavailable, sqlite_file

log = logging.getLogger(__name__)
Unit = Callable[[Connection], Any]
_STOP = object()

# What a durable answer waits for, on /metrics: a unit queues behind the batch being written,
# then its own batch waits for the other workers' commits (SQLite's write lock) and writes.
COMMIT_SECONDS = Histogram(
    "slatebandit_commit_seconds",
    "Group commits: seconds a unit queued for its batch (queued), a batch waited for the "
    "write lock (lock), and wrote and committed (write)",
    ["part"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
COMMIT_UNITS = Histogram(
    "slatebandit_commit_units",
    "Units (a slate, reward or event each) written by one group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)


class Batcher:
    """Units queued from the event loop, run in batches on one thread of their own.

    A subclass says how a batch is made durable in ``_commit(units) -> [(ok, value), ...]``;
    each caller of ``submit`` resumes with its unit's value (or exception) once that is done.
    """

    def __init__(self, *, max_batch: int, name: str) -> None:
        self.max_batch = max_batch
        self._name = name
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"slatebandit-{name}")
        self._task: asyncio.Task[None] | None = None
        self.queued: Any = None  # a histogram of the seconds each unit waits for its batch

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        """Make everything already submitted durable, then stop."""
        if self._task is not None:
            self._queue.put_nowait(_STOP)
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    async def submit(self, unit: Any) -> Any:
        """Queue ``unit`` and return its result once the batch holding it is durable."""
        if self._task is None:
            raise RuntimeError(f"the {self._name} is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((unit, future, time.perf_counter()))
        return await future

    async def _run(self) -> None:
        # Each batch starts here, on the loop, so a busy loop holds back the next one: that
        # wait is what fills the batches. A writer thread that went on by itself measured
        # worse under the soak: 1.5 units a commit against 3, 20% more server CPU, p50 38 to
        # 49 ms against 25 to 40, and a lower capacity (467 against 537 slates/s).
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if _STOP in batch:
                stopping = True
                batch.remove(_STOP)
                while not self._queue.empty():  # submitted before stop(): still committed
                    batch.append(self._queue.get_nowait())
            if not batch:
                continue
            if self.queued is not None:
                started = time.perf_counter()
                for _, _, submitted in batch:
                    self.queued.observe(started - submitted)
            outcomes = await loop.run_in_executor(
                self._executor, self._commit, [unit for unit, _, _ in batch]
            )
            for (_, future, _), (ok, value) in zip(batch, outcomes, strict=True):
                if future.cancelled():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _commit(self, units: list[Any]) -> list[tuple[bool, Any]]:
        raise NotImplementedError


class GroupCommitWriter(Batcher):
    def __init__(self, engine: Engine, *, max_batch: int = 512) -> None:
        super().__init__(max_batch=max_batch, name="group-commit-writer")
        self.engine = engine
        self.commits = 0  # transactions committed, for tests
        self.units = 0  # units committed
        self.queued = COMMIT_SECONDS.labels("queued")
        self._lock = WriteLock(_sqlite_lock_path(engine))

    async def stop(self) -> None:
        await super().stop()
        self._lock.close()

    def _commit(self, units: list[Unit]) -> list[tuple[bool, Any]]:
        try:
            waited = time.perf_counter()
            with self._lock:
                locked = time.perf_counter()
                with self.engine.begin() as connection:
                    results = _write(connection, units)
            COMMIT_SECONDS.labels("lock").observe(locked - waited)
            COMMIT_SECONDS.labels("write").observe(time.perf_counter() - locked)
            COMMIT_UNITS.observe(len(units))
        except Exception as exc:  # noqa: BLE001 - handed to the caller that owns the unit
            if is_unavailable(exc):  # retrying each unit alone would only fail again
                log.debug("group commit of %d units: database unavailable (%s)", len(units), exc)
                return [(False, _unavailable(exc)) for _ in units]
            if len(units) == 1:
                return [(False, exc)]
            log.debug("group commit of %d units failed (%s); retrying one by one", len(units), exc)
            return [self._commit([unit])[0] for unit in units]
        self.commits += 1
        self.units += len(units)
        return [(True, result) for result in results]


def _unavailable(exc: Exception) -> DatabaseUnavailable:
    if isinstance(exc, DatabaseUnavailable):
        return exc
    error = DatabaseUnavailable(f"database: unavailable ({type(exc).__name__})", field="database")
    error.__cause__ = exc
    return error


def _sqlite_lock_path(engine: Engine) -> Path | None:
    database = sqlite_file(engine)
    return None if database is None else Path(database + ".writelock")


class WriteLock:
    """Queue SQLite writers of several processes on a file lock.

    SQLite's own busy handler polls with sleeps of up to 100 ms, which with two workers put
    400 ms into the p99 at 8 concurrent requests; a waiter on flock wakes as soon as it is
    released. Other writers (``items load``) still meet SQLite's busy timeout, as before.

    The file is opened at the first commit and stays open until ``close``: each system call
    lets go of the GIL, and under load the writer's thread then waits for the event loop to
    hand it back. ``path`` None (not SQLite) locks nothing.
    """

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._handle: IO[str] | None = None

    def __enter__(self) -> None:
        if self._path is None:
            return
        if self._handle is None:
            self._handle = self._path.open("a")
        fcntl.flock(self._handle, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _write(connection: Connection, units: list[Unit]) -> list[Any]:
    results: list[Any] = [None] * len(units)
    batches: dict[type, list[int]] = {}
    for i, unit in enumerate(units):
        if hasattr(type(unit), "write_many"):
            batches.setdefault(type(unit), []).append(i)
        else:
            results[i] = unit(connection)
    for kind, positions in batches.items():
        written = kind.write_many(connection, [units[i] for i in positions])  # type: ignore[attr-defined]
        for i, result in zip(positions, written, strict=True):
            results[i] = result
    return results
