"""``GET /metrics``: Prometheus' text format, from ``prometheus_client``, correct across workers.

Two kinds of figure, kept apart so that neither is counted twice:

- **Counted by the worker that served the request** (slates, slot kinds, rewards, events, each
  route's duration and status). ``slatebandit serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a
  fresh directory before its workers start, so ``prometheus_client`` keeps these counters in
  memory-mapped files there, one per worker, and whichever worker answers a scrape sums them
  all (its ``MultiProcessCollector``). A worker that exits leaves its file, so counters never
  go backwards when a worker restarts. Three gauges are kept so too, summed over the live
  workers (their objects frozen from the garbage collector, and their caches' entries and
  bytes, ``recommender/background.py``): a worker takes them along as it exits.
  Without that variable (tests, an embedding app) they live in this process's default
  registry.
- **Read at scrape time, once, by the worker that answers** (model versions, learner lag,
  learned examples, release verdicts, the database, the spool, the catalog). They are the
  database's or the machine's figures, the same whichever worker reads them, so summing them
  across workers would be wrong: they are built fresh for each scrape and never written to the
  shared files.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Awaitable, Callable, Container, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import Connection, func, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from slatebandit.errors import DatabaseUnavailable
from slatebandit.logging.models import champion, latest_version
from slatebandit.logging.schema import decisions, model_gates
from slatebandit.recommender import Decision, Recommender
from slatebandit.server.services import for_request

disable_created_metrics()  # no ``_created`` series beside each counter: noise on a dashboard
# prometheus_client chose its value class when it was imported: shared files or memory.
MULTIPROCESS = values.ValueClass is not values.MutexValue

SLATES = Counter("slatebandit_slates", "Slates served", ["policy", "arm"])
SLOT_KINDS = Counter("slatebandit_slot_kinds", "Slots served, by kind", ["kind"])
REWARDS = Counter("slatebandit_rewards", "Rewards accepted (202)", ["type"])
EVENTS = Counter("slatebandit_events", "Shopper events accepted (202)", ["type"])
NOT_LOGGED = Counter(
    "slatebandit_unlogged_slates", "Slates served that were neither committed nor spooled"
)
SPOOLED = Counter("slatebandit_spooled_slates", "Slates logged to the spool (database away)")
DURATION = Histogram(
    "slatebandit_request_duration_seconds",
    "Time from a request's arrival to its answer's first byte, by route",
    ["route"],
    # 35 and 75 ms: either side of the 50 ms a slate's tail is held to (benchmarks/soak.py)
    buckets=(
        *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.035, 0.05, 0.075, 0.1),
        *(0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    ),
)
RESPONSES = Counter(
    "slatebandit_responses", "Answers by route and HTTP status class", ["route", "status"]
)
GC_PAUSES = Histogram(
    "slatebandit_gc_pause_seconds",
    "The worker's garbage-collection pauses, by generation (server/collector.py)",
    ["generation"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
# Each generation's series exists from the start, at zero, rather than from the worker's first
# timed collection of it: a dashboard (and a scrape right after start) sees all three.
for _generation in range(3):
    GC_PAUSES.labels(str(_generation))
GC_FROZEN = Gauge(
    "slatebandit_gc_frozen_objects",
    "Objects the live workers' collectors no longer walk (server/collector.py)",
    multiprocess_mode="livesum",
)


def worker_exiting() -> None:
    """Take this worker's live gauges (frozen objects, caches) out of the shared files as it
    exits; its counters stay, so that sums never go backwards."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(os.getpid())


def slate_served(decision: Decision) -> None:
    SLATES.labels(decision.policy, decision.arm or "").inc()
    # One increment per kind, not per slot: each costs a lock and a write to the shared file.
    for kind, n in collections.Counter(item["kind"] for item in decision.items).items():
        SLOT_KINDS.labels(kind).inc(n)
    if decision.logged == "spool":
        SPOOLED.inc()
    elif decision.logged == "none":
        NOT_LOGGED.inc()


def reward_accepted(type: str, known: Container[str]) -> None:
    """A reward stored (not a duplicate). Types outside the reward table count as ``other``:
    a client may send any type with an explicit value, and each label value would live in
    every worker's file for good."""
    REWARDS.labels(type if type in known else "other").inc()


def event_accepted(type: str) -> None:
    EVENTS.labels(type).inc()


# Timing --------------------------------------------------------------------------------------

DRY_RUN = "slatebandit.dry_run"  # set in a dry run's scope: timed apart from served slates

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Timing:
    """ASGI middleware: each HTTP request's duration and status class, labelled by its route's
    template (``/v1/items/{item_id}``), never its raw path, so labels stay few."""

    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        # By the matched route (``scope["route"]``, newer Starlette) or, failing that, by its
        # endpoint (``scope["endpoint"]``, which every Starlette sets).
        self.labels: dict[int, str] = {}
        for route in routes:
            if isinstance(route, Mount):
                self._label(route, route.app, route.path)  # what its app does not route itself
                # The two Personalizer mounts share one app: its routes keep the first prefix.
                for inner in getattr(route.app, "routes", ()):
                    if isinstance(inner, Route):
                        self._label(inner, inner.endpoint, route.path + inner.path_format)
            elif isinstance(route, Route):
                self._label(route, route.endpoint, route.path_format)

    def _label(self, route: BaseRoute, endpoint: object, label: str) -> None:
        self.labels.setdefault(id(route), label)
        self.labels.setdefault(id(endpoint), label)

    def route_of(self, scope: Scope) -> str:
        """The request's route template; ``unmatched`` for a path no route serves."""
        matched = scope.get("route") or scope.get("endpoint")
        if scope.get(DRY_RUN):
            return "/v1/slates?dry_run"
        return self.labels.get(id(matched), "unmatched")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        answered = False

        def observe(status: int) -> None:
            route = self.route_of(scope)
            DURATION.labels(route).observe(time.perf_counter() - start)
            RESPONSES.labels(route, f"{status // 100}xx").inc()

        async def sent(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                observe(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sent)
        except BaseException:
            if not answered:  # the outermost handler answers it with a 500
                observe(500)
            raise


# The scrape ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """What the database says at scrape time."""

    champion: int | None
    latest: int | None
    examples: int
    oldest_unlearned: float | None  # created_at of the first decision the latest has not learned
    verdicts: list[tuple[str, str, int]]  # (stage, outcome, count)

    def learner_lag(self, now: float) -> float:
        """Seconds the oldest decision not learned by the newest checkpoint has waited."""
        waiting = self.oldest_unlearned
        return 0.0 if waiting is None else max(0.0, now - waiting)


def read_stored(conn: Connection) -> Stored:
    latest = latest_version(conn)
    through = 0 if latest is None else latest.learned_through
    oldest = conn.execute(
        select(decisions.c.created_at)
        .where(decisions.c.id > through)
        .order_by(decisions.c.id)
        .limit(1)
    ).scalar()
    verdicts = conn.execute(
        select(model_gates.c.stage, model_gates.c.outcome, func.count()).group_by(
            model_gates.c.stage, model_gates.c.outcome
        )
    ).all()
    return Stored(
        champion=champion(conn),
        latest=None if latest is None else latest.version,
        examples=0 if latest is None else latest.examples,
        oldest_unlearned=oldest,
        verdicts=[(stage, outcome, int(n)) for stage, outcome, n in verdicts],
    )


def live_families(r: Recommender, up: bool, stored: Stored | None) -> list[Metric]:
    """The figures read at scrape time (see the module docstring)."""
    health = r.outage.health()
    spool: dict[str, int] = health["spool"]  # type: ignore[assignment]
    database = GaugeMetricFamily("slatebandit_database_up", "1 if the database answered a probe")
    database.add_metric([], 1.0 if up else 0.0)
    spool_bytes = GaugeMetricFamily(
        "slatebandit_spool_bytes", "Bytes waiting in this machine's spool for the database"
    )
    spool_bytes.add_metric([], spool["bytes"])
    segments = GaugeMetricFamily("slatebandit_spool_segments", "Spool segments not yet shipped")
    segments.add_metric([], spool["segments"])
    items = GaugeMetricFamily("slatebandit_catalog_items", "Items the index can recommend")
    items.add_metric([], len(r.store.index))
    version = GaugeMetricFamily(
        "slatebandit_model_version", "Model version by role", labels=["role"]
    )
    version.add_metric(["serving"], r.policy.scorer.version)
    running = r.canaries.running
    if running is not None:
        version.add_metric(["canary"], running.version)
    families: list[Metric] = [database, spool_bytes, segments, items, version]
    if stored is None:  # the database is away: its figures are absent, not zero
        return families
    if stored.champion is not None:
        version.add_metric(["champion"], stored.champion)
    if stored.latest is not None:
        version.add_metric(["latest"], stored.latest)
    lag = GaugeMetricFamily(
        "slatebandit_learner_lag_seconds",
        "Age of the oldest decision the newest checkpoint has not learned (0: none waits); "
        "includes the reward wait",
    )
    lag.add_metric([], stored.learner_lag(time.time()))
    learned = CounterMetricFamily(
        "slatebandit_learned_examples", "Examples the newest checkpoint's lineage has learned"
    )
    learned.add_metric([], stored.examples)
    verdicts = CounterMetricFamily(
        "slatebandit_release_verdicts",
        "Release verdicts recorded, by stage and outcome",
        labels=["stage", "outcome"],
    )
    for stage, outcome, n in stored.verdicts:
        verdicts.add_metric([stage, outcome], n)
    return [*families, lag, learned, verdicts]


class _Families:
    """A registry-like source for ``generate_latest``: every family of ``sources``."""

    def __init__(self, *sources: Any) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def exposition(live: list[Metric]) -> bytes:
    """Every worker's counters (or this process's) and the live figures, as Prometheus text."""
    if MULTIPROCESS:
        counted = CollectorRegistry()
        MultiProcessCollector(counted)
        return generate_latest(_Families(counted, _Fixed(live)))  # type: ignore[arg-type]
    return generate_latest(_Families(REGISTRY, _Fixed(live)))  # type: ignore[arg-type]


def latency_buckets() -> dict[str, dict[str, object]]:
    """Per route: the duration histogram's cumulative bucket counts (every worker's), as
    ``{"count", "sum", "buckets": [[upper bound, count], ...]}`` (the +Inf bucket is the
    count)."""
    source = CollectorRegistry() if MULTIPROCESS else REGISTRY
    if MULTIPROCESS:
        MultiProcessCollector(source)
    routes: dict[str, dict[str, Any]] = {}
    for family in source.collect():
        if family.name != "slatebandit_request_duration_seconds":
            continue
        for sample in family.samples:
            route = routes.setdefault(
                sample.labels["route"], {"count": 0.0, "sum": 0.0, "buckets": []}
            )
            if sample.name.endswith("_bucket") and sample.labels["le"] != "+Inf":  # = count
                route["buckets"].append([float(sample.labels["le"]), sample.value])
            elif sample.name.endswith("_count"):
                route["count"] = sample.value
            elif sample.name.endswith("_sum"):
                route["sum"] = sample.value
    for route in routes.values():
        route["buckets"].sort()
    return routes


async def metrics(request: Request) -> Response:
    r = for_request(request, "analyst")
    up = await r.outage.probe()
    stored = None
    if up:
        try:
            stored = await r.read(read_stored)
        except DatabaseUnavailable:  # gone between the probe and the read
            up = False
    body = await asyncio.to_thread(exposition, live_families(r, up, stored))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
