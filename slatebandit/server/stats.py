"""``GET /v1/stats``: the console's overview in one answer (scope analyst).

Traffic comes from the log (``logging.traffic``), so it is every worker's, and it survives a
restart. Latency comes from the request histograms ``/metrics`` exposes (summed across
workers): cumulative bucket counts, from which a client takes differences between two polls
for the latency of that interval. The rest is ``/metrics``' scrape-time figures, as JSON.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from slatebandit.errors import DatabaseUnavailable, InvalidInput
from slatebandit.logging.traffic import Bucket, reward_arrivals, traffic
from slatebandit.server import metrics
from slatebandit.server.codec import respond
from slatebandit.server.services import for_request

MAX_MINUTES = 7 * 24 * 60
STEPS = (10, 60, 300, 900, 3600)  # seconds per bucket a client may ask for


def _number(request: Request, name: str, default: int, allowed: range | tuple[int, ...]) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) not in allowed:
        shown = (
            f"one of {', '.join(map(str, allowed))}"
            if isinstance(allowed, tuple)
            else (f"a whole number from {allowed.start} to {allowed.stop - 1}")
        )
        raise InvalidInput(f"{name}: must be {shown}", field=name)
    return int(raw)


async def stats(request: Request) -> Response:
    s = for_request(request, "analyst")
    minutes = _number(request, "minutes", 60, range(1, MAX_MINUTES + 1))
    step = _number(request, "step", 60, STEPS)
    now = time.time()
    since = (now - minutes * 60) // step * step  # whole buckets

    def read(conn: Connection) -> tuple[list[Bucket], list[tuple[float, int]], metrics.Stored]:
        return (
            traffic(conn, since, step),
            reward_arrivals(conn, since, step),
            metrics.read_stored(conn),
        )

    up = await s.outage.probe()
    buckets: list[Bucket] = []
    arrivals: list[tuple[float, int]] = []
    stored = None
    if up:
        try:
            buckets, arrivals, stored = await s.read(read)
        except DatabaseUnavailable:
            up = False
    latency = await asyncio.to_thread(metrics.latency_buckets)
    health = s.outage.health()
    running = s.canaries.running
    answer = {
        "now": now,
        "since": since,
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
