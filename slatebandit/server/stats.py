"""``GET /v1/stats``: the console's overview in one answer (scope analyst).

Traffic comes from the log (``logging.traffic``), so it is every worker's, and it survives a
restart. Latency comes from the request histograms ``/metrics`` exposes (summed across
workers): cumulative bucket counts, from which a client takes differences between two polls
for the latency of that interval. The rest is ``/metrics``' scrape-time figures, as JSON.
"""

from __future__ import annotations

import asyncio
import math
import time
from functools import partial

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from slatebandit.errors import DatabaseUnavailable, InvalidInput
from slatebandit.logging.traffic import Bucket, reward_arrivals, traffic
from slatebandit.server import metrics
from slatebandit.server.codec import respond
from slatebandit.server.schemas import query_int
from slatebandit.server.services import for_request

MAX_MINUTES = 7 * 24 * 60
STEPS = (10, 60, 300, 900, 3600)  # seconds per bucket a client may ask for
MAX_BUCKETS = 2016  # a week of 5-minute buckets, a day of minutes
# A worker reads the log for a window at most this often, whoever asks: an hour's window at
# 280 slates/s (a million shown slots) took 0.7 to 0.8 s to aggregate on SQLite (measured),
# and every open console polls every 5 s.
CACHE_SECONDS = 10.0


Read = tuple[list[Bucket], list[tuple[float, int]], metrics.Stored]


def _read(conn: Connection, since: float, step: int) -> Read:
    return traffic(conn, since, step), reward_arrivals(conn, since, step), metrics.read_stored(conn)


async def stats(request: Request) -> Response:
    s = for_request(request, "analyst")
    minutes = query_int(request, "minutes", 60, 1, MAX_MINUTES)
    step = query_int(request, "step", 60, min(STEPS), max(STEPS))
    if step not in STEPS:
        raise InvalidInput(f"step: must be one of {', '.join(map(str, STEPS))}", field="step")
    if minutes * 60 // step > MAX_BUCKETS:  # each poll aggregates the window's slots
        raise InvalidInput(
            f"minutes: at most {MAX_BUCKETS} buckets of {step} s ({MAX_BUCKETS * step // 60} "
            "minutes); ask for a longer step",
            field="minutes",
        )
    now = time.time()
    kept: dict[tuple[int, int], tuple[float, float, Read]] = request.app.state.stats
    read_at, since, figures = kept.get((minutes, step), (-math.inf, 0.0, None))
    up = await s.outage.probe()
    if up and (figures is None or now - read_at > CACHE_SECONDS):
        since = (now - minutes * 60) // step * step  # whole buckets
        try:
            figures = await s.read(partial(_read, since=since, step=step))
            kept[(minutes, step)] = (now, since, figures)
        except DatabaseUnavailable:
            up = False
    buckets, arrivals, stored = figures if up and figures is not None else ([], [], None)
    latency = await asyncio.to_thread(metrics.latency_buckets)
    health = s.outage.health()
    running = s.canaries.running
    answer = {
        "now": now,
        "since": since,  # of the window read, at most CACHE_SECONDS ago
        "step": step,
        "traffic": [b.to_dict() for b in buckets],
        "rewards": [{"start": start, "rewards": n} for start, n in arrivals],
        "latency": latency,
        "database": "ok" if up else "unreachable",
        "spool": health["spool"],
        "items": len(s.store.index),
        "models": {
            "serving": s.policy.scorer.version,
            "canary": None if running is None else running.version,
            "champion": None if stored is None else stored.champion,
            "latest": None if stored is None else stored.latest,
            "learned_examples": None if stored is None else stored.examples,
        },
        "learner_lag_seconds": None if stored is None else stored.learner_lag(now),
    }
    return respond(request, answer)
