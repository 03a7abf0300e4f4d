"""``GET /v1/metrics/summary?minutes=N``: what the window's slates led to (scope analyst).

Slates, CTR, conversion rate and revenue per slate with 95% intervals, overall, by placement
(with each one's share of the slates) and by policy, from the log (``logging.outcomes``), so
every worker's traffic counts and a restart loses nothing.
"""

from __future__ import annotations

import math
import time
from functools import partial

from starlette.requests import Request
from starlette.responses import Response

from slatebandit.logging.outcomes import Summary, summary
from slatebandit.server.codec import respond
from slatebandit.server.schemas import query_int
from slatebandit.server.services import for_request

MAX_MINUTES = 7 * 24 * 60
# A worker reads a window from the log at most this often, whoever asks: each read counts
# every shown slot and reward of the window, and every open console asks every 5 s.
CACHE_SECONDS = 10.0


async def metrics_summary(request: Request) -> Response:
    s = for_request(request, "analyst")
    minutes = query_int(request, "minutes", 60, 1, MAX_MINUTES)
    now = time.time()
    kept: dict[int, tuple[float, Summary]] = request.app.state.summary
    read_at, figures = kept.get(minutes, (-math.inf, None))
    if figures is None or now - read_at > CACHE_SECONDS:
        figures = await s.read(partial(summary, since=now - minutes * 60))
        kept[minutes] = (now, figures)
    return respond(request, {"now": now, "minutes": minutes, **figures.to_dict()})
