"""A serving worker's background jobs, in one table (``JOBS``).

Each job runs every ``seconds(settings)`` on the worker's event loop (what blocks goes to a
thread), from ``Recommender.start`` until ``close``. Jobs that need the database pause while it
is away; the database probe itself does not, and ships the spool once it answers. The learner
also pauses while records wait in a spool: a shipped decision must not be learned before the
rewards that ship after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from prometheus_client import Gauge
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from slatebandit.config import Settings
from slatebandit.logging import machines
from slatebandit.logging.engine import is_unavailable
from slatebandit.logging.partitions import ensure_partitions
from slatebandit.logging.privacy import Purged, purge_before
from slatebandit.policies import follow_champion
from slatebandit.recommender import shipping
from slatebandit.recommender.state import Parts
from slatebandit.retrieval.embedding_job import follow_factors, train_if_leased

log = logging.getLogger(__name__)
LEARN_SECONDS = 1.0  # the embedded learner's lease is renewed and a turn started this often
PURGE_SECONDS = 3600.0  # how often the retention purge runs
CACHE_SECONDS = 30.0  # how often the caches' sizes are counted for /metrics

# Set by each worker, summed over the live ones (``server/metrics.py`` says how).
CACHE_ENTRIES = Gauge(
    "slatebandit_worker_cache_entries",
    "Entries the live workers' caches hold, by cache (all bounded; slatebandit/memory.py)",
    ["cache"],
    multiprocess_mode="livesum",
)
CACHE_BYTES = Gauge(
    "slatebandit_worker_cache_bytes",
    "Approximate bytes the live workers' caches hold, by cache (slatebandit/memory.py)",
    ["cache"],
    multiprocess_mode="livesum",
)


def _thread(job: Callable[[Parts], object]) -> Callable[[Parts], Awaitable[object]]:
    """``job`` run on a worker thread, off the event loop."""
    return lambda r: asyncio.to_thread(job, r)


def _database_away(r: Parts) -> bool:
    return r.outage.degraded


@dataclass(frozen=True)
class Job:
    name: str
    seconds: Callable[[Settings], float]
    run: Callable[[Parts], Awaitable[object]]
    paused: Callable[[Parts], bool] = _database_away
    enabled: Callable[[Settings], bool] = lambda settings: True
    at_start: bool = False  # also once before the first interval


def count_caches(r: Parts) -> None:
    """Set the cache gauges from this worker's caches (2 to 3 ms of walking samples: on a
    thread, so that the event loop keeps serving between switch intervals)."""
    for name, (entries, size) in r.memory().items():
        CACHE_ENTRIES.labels(name).set(entries)
        CACHE_BYTES.labels(name).set(size)


def _model_poll(settings: Settings) -> float:
    return settings.model_poll_seconds


def _shared_database(settings: Settings) -> bool:
    """Whether other machines may serve from this database (not SQLite's file)."""
    return machines.shared(make_url(settings.database_url).get_backend_name())


JOBS: tuple[Job, ...] = (
    Job(
        "database probe, and the spool shipped once it answers",
        lambda s: s.db_probe_seconds,
        shipping.watch,
        paused=lambda r: False,
    ),
    Job(
        "machine registry: this machine's spool reported, hopeless parked rewards dropped",
        lambda s: machines.HEARTBEAT_SECONDS,
        shipping.heartbeat,
        enabled=_shared_database,
        at_start=True,  # a restart holding a dead run's spool says so before it serves
    ),
    Job("catalog changes", lambda s: s.catalog_poll_seconds, lambda r: r.store.sync(r.engine)),
    Job(
        "cache sizes, for /metrics",
        lambda s: CACHE_SECONDS,
        _thread(count_caches),
        paused=lambda r: False,
        at_start=True,
    ),
    Job(
        "merchandising rules",
        lambda s: s.catalog_poll_seconds,
        _thread(lambda r: r.rules.refresh(r.engine, r.store.catalog)),
        at_start=True,
    ),
    Job(
        "bought-together counts, extended by the carts and purchases recorded since",
        lambda s: s.catalog_poll_seconds,
        _thread(lambda r: r.together.refresh(r.engine)),
        at_start=True,  # a starting worker's cart slates have its recent history at once
    ),
    Job(
        "popular items",
        lambda s: s.popular_refresh_seconds,
        _thread(lambda r: r.store.catalog.refresh_popular()),
    ),
    Job(
        "champion model",
        _model_poll,
        lambda r: follow_champion(r.engine, r.policy, r.policies.loaded),
    ),
    Job("item embeddings", _model_poll, lambda r: follow_factors(r.engine, r.store)),
    Job("experiments", _model_poll, _thread(lambda r: r.experiments.refresh())),
    Job("canaries", _model_poll, _thread(lambda r: r.canaries.refresh())),
    Job("Personalizer loops", _model_poll, _thread(lambda r: r.loops.refresh())),
    Job(
        "retention purge",
        lambda s: PURGE_SECONDS,
        _thread(lambda r: purge_expired(r.engine, r.settings)),
        enabled=lambda s: s.retention_days > 0,
        at_start=True,  # deletes are idempotent
    ),
    Job(
        "log partitions",
        lambda s: PURGE_SECONDS,
        _thread(lambda r: prepare_partitions(r.engine)),
        enabled=lambda s: s.database_url.startswith("postgresql"),
        at_start=True,  # a server back after days away makes the days it missed at once
    ),
    Job(
        "collaborative embeddings training",
        lambda s: s.embedding_interval,
        _thread(lambda r: train_if_leased(r.engine, r.settings, r.holder)),
        enabled=lambda s: s.embedding_interval > 0,
    ),
    Job(
        "learner (a child process of the lease holder)",
        lambda s: LEARN_SECONDS,
        _thread(lambda r: r.learning.tick()),
        paused=lambda r: r.outage.spooling(),
        enabled=lambda s: s.learner == "embedded",
    ),
)


async def start_jobs(r: Parts, jobs: tuple[Job, ...]) -> tuple[asyncio.Task[None], ...]:
    """Start every enabled job (running the ``at_start`` ones once first)."""
    tasks = []
    for job in jobs:
        if not job.enabled(r.settings):
            continue
        if job.at_start:
            await job.run(r)
        run = partial(job.run, r)
        seconds = job.seconds(r.settings)
        tasks.append(
            asyncio.create_task(every(seconds, run, partial(job.paused, r)), name=job.name)
        )
    return tuple(tasks)


async def every(seconds: float, job, paused=lambda: False) -> None:  # type: ignore[no-untyped-def]
    """Run ``job()`` every ``seconds`` (skipped while ``paused()``) until cancelled."""
    task = asyncio.current_task()
    while True:
        await asyncio.sleep(seconds)
        if paused():
            continue
        try:
            await job()
        except Exception as exc:  # a failed poll must not end the loop; the next one retries
            if is_unavailable(exc):
                log.warning("background job: database unreachable (%s)", type(exc).__name__)
            else:
                log.exception("background job failed")
        # Python 3.11's asyncio.wait_for can swallow a cancellation that lands as its timeout
        # fires (it turns it into TimeoutError; the outage probe then reports the database
        # unreachable and returns): without this check the loop ran on, and a worker's
        # shutdown waited for it for ever.
        if task is not None and task.cancelling():
            raise asyncio.CancelledError


def purge_expired(engine: Engine, settings: Settings, now: float | None = None) -> Purged | None:
    """Delete what is older than ``SLATEBANDIT_RETENTION_DAYS`` (None when it is 0)."""
    if settings.retention_days <= 0:
        return None
    cutoff = (time.time() if now is None else now) - settings.retention_days * 86400.0
    with engine.begin() as conn:
        purged = purge_before(conn, cutoff)
    if purged.decisions or purged.events or purged.partitions:
        log.info(
            "retention: dropped %d daily partitions, purged %d decisions, %d rewards, %d events "
            "older than %g days",
            len(purged.partitions),
            purged.decisions,
            purged.rewards,
            purged.events,
            settings.retention_days,
        )
    return purged


def prepare_partitions(engine: Engine) -> list[str]:
    """Create the coming days' log partitions on PostgreSQL (``logging.partitions``)."""
    with engine.begin() as conn:
        made = ensure_partitions(conn, time.time())
    if made:
        log.info("log partitions: created %s", ", ".join(made))
    return made
