"""``DELETE /v1/users/{user_id}``: erase a shopper (``slatebandit.logging.privacy`` says what
that removes; the retention purge is a background job, ``recommender.background``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from slatebandit.server.codec import respond
from slatebandit.server.services import for_request


async def erase(request: Request) -> Response:
    s = for_request(request, "admin")
    raw = request.path_params["user_id"]
    erased = await s.erase(raw)
    return respond(request, {"user_id": raw, **erased.to_dict()})
