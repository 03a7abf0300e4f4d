"""``DELETE /v1/users/{user_id}``: erase a shopper; and the retention purge the lifespan runs
(``slatebandit.logging.privacy`` says what each removes)."""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import Response

from slatebandit.config import Settings
from slatebandit.logging.privacy import Purged, erase_user, purge_before
from slatebandit.server.codec import respond
from slatebandit.server.services import for_request

log = logging.getLogger(__name__)
PURGE_SECONDS = 3600.0  # how often the retention purge runs


async def erase(request: Request) -> Response:
    s = for_request(request, "admin")
    raw = request.path_params["user_id"]
    user_id = s.user_key(raw)
    erased = await s.writer.submit(lambda conn: erase_user(conn, user_id))
    s.users.drop(user_id)
    for event_id in [e for e, d in s.decisions.items() if d.user_id == user_id]:
        del s.decisions[event_id]  # a reward for them must find the redacted decision
    return respond(request, {"user_id": raw, **erased.to_dict()})


def purge_expired(engine: Engine, settings: Settings, now: float | None = None) -> Purged | None:
    """Delete what is older than ``SLATEBANDIT_RETENTION_DAYS`` (None when it is 0)."""
    if settings.retention_days <= 0:
        return None
    cutoff = (time.time() if now is None else now) - settings.retention_days * 86400.0
    with engine.begin() as conn:
        purged = purge_before(conn, cutoff)
    if purged.decisions or purged.events:
        log.info(
            "retention: purged %d decisions, %d rewards, %d events older than %g days",
            purged.decisions,
            purged.rewards,
            purged.events,
            settings.retention_days,
        )
    return purged
