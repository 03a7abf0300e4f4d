"""Azure AI Personalizer's REST API, so its clients can point at slatebandit unchanged.

The routes are served under ``/personalizer/v1.0``, ``/personalizer/v1.1-preview.3`` and
``/personalizer`` (``?api-version=2022-09-01-preview``, what ``azure-ai-personalizer`` calls),
for the loop ``default``; ``/loops/{loop}/personalizer/...`` reaches another configured loop.
Errors take Personalizer's shape, ``{"error": {"code", "message", "target"}}``, with the code
also in the ``x-ms-error-code`` header. The key travels as ``Ocp-Apim-Subscription-Key``.

This module holds the serving routes (rank, reward, activate, single and multi-slot) and the
routing; ``personalizer_admin`` holds configuration, model, logs and evaluations.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

import numpy as np
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from slatebandit.errors import (
    DatabaseUnavailable,
    InvalidInput,
    NotFound,
    SlatebanditError,
)
from slatebandit.logging import personalizer as store
from slatebandit.logging.engine import is_unavailable
from slatebandit.personalizer.events import Event
from slatebandit.personalizer.loops import Loop
from slatebandit.personalizer.requests import (
    WARN_ACTIONS,
    parse_id,
    parse_multislot_reward,
    parse_rank,
    parse_reward,
)
from slatebandit.recommender import Recommender
from slatebandit.server.codec import read_body
from slatebandit.server.services import for_request

log = logging.getLogger(__name__)
API_VERSIONS = ("2022-09-01-preview",)  # what the unversioned form accepts as api-version
VERSION_PREFIXES = ("", "/v1.0", "/v1.1-preview.3")
# Personalizer's error code for each status, where a route does not name a better one.
STATUS_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "ResourceNotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    408: "RequestTimeout",
    409: "Conflict",
    413: "PayloadSizeExceeded",
    415: "UnsupportedMediaType",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}

Handler = Callable[[Request], Awaitable[Response]]
_warned: set[str] = set()  # loops warned about ranks with many actions


def error(exc: SlatebanditError, invalid_code: str = "BadRequest") -> Response:
    code = getattr(exc, "personalizer_code", None) or (
        invalid_code if exc.status == 400 else STATUS_CODES.get(exc.status, "InternalServerError")
    )
    body: dict[str, str] = {"code": code, "message": exc.message}
    if exc.field:
        body["target"] = exc.field
    response = Response(json.dumps({"error": body}), exc.status, media_type="application/json")
    response.headers["x-ms-error-code"] = code
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def route(
    scope: str, invalid_code: str = "BadRequest"
) -> Callable[[Callable[..., Awaitable[Response]]], Handler]:
    """A Personalizer handler: checks the key for ``scope`` and the api-version, finds the loop,
    and answers any error in Personalizer's shape (``invalid_code`` for a 400)."""

    def wrap(handler: Callable[..., Awaitable[Response]]) -> Handler:
        @functools.wraps(handler)
        async def run(request: Request) -> Response:
            try:
                s = for_request(request, scope)
                version = request.query_params.get("api-version")
                if version is not None and version not in API_VERSIONS:
                    raise InvalidInput(
                        f"api-version: {version!r} is not supported; use {API_VERSIONS[0]}",
                        field="api-version",
                    )
                loop = s.loops.get(request.path_params.get("loop", "default"))
                return await handler(request, s, loop)
            except SlatebanditError as exc:
                return error(exc, invalid_code)
            except Exception as exc:
                if is_unavailable(exc):  # Personalizer routes are not spooled: retry later
                    return error(DatabaseUnavailable("database: unreachable", field="database"))
                log.exception("unexpected error on %s %s", request.method, request.url.path)
                return error(SlatebanditError("internal error"))

        return run

    return wrap


@route("serve", "InvalidRankRequest")
async def rank(request: Request, s: Recommender, loop: Loop) -> Response:
    event_id, event, pmfs = await _rank(request, s, loop, multislot=False)
    chosen, pmf = event.slots[0].chosen, pmfs[0]
    # The pick first, then the rest by probability; excluded actions last, at 0.
    order = sorted(range(len(pmf)), key=lambda i: (i != chosen, -pmf[i], i))
    ranking = [{"id": event.action_ids[i], "probability": float(pmf[i])} for i in order]
    return _created(
        {"eventId": event_id, "rewardActionId": event.action_ids[chosen], "ranking": ranking}
    )


@route("serve", "InvalidRankRequest")
async def rank_multislot(request: Request, s: Recommender, loop: Loop) -> Response:
    event_id, event, _ = await _rank(request, s, loop, multislot=True)
    slots = [
        {"id": slot.id, "rewardActionId": event.action_ids[slot.chosen]} for slot in event.slots
    ]
    return _created({"eventId": event_id, "slots": slots})


async def _rank(
    request: Request, s: Recommender, loop: Loop, *, multislot: bool
) -> tuple[str, Event, list[np.ndarray]]:
    """Rank, log the event (durably), and return its id, the event and each slot's pmf."""
    body = parse_rank(
        await read_body(request, s.settings.max_body_bytes),
        s.settings.personalizer_max_actions,
        multislot=multislot,
    )
    if len(body.action_ids) > WARN_ACTIONS and loop.name not in _warned:
        _warned.add(loop.name)
        log.warning(
            "loop %s: a rank with %d actions (Personalizer allowed %d; we serve up to "
            "SLATEBANDIT_PERSONALIZER_MAX_ACTIONS); said once per loop",
            loop.name,
            len(body.action_ids),
            WARN_ACTIONS,
        )
    event, pmfs = await asyncio.to_thread(
        s.loops.rank, loop, body.context, body.action_ids, body.action_features, body.slots
    )
    unit = partial(
        store.insert_event,
        loop=loop.name,
        event_id=body.event_id,
        activated=not body.defer_activation,
        model_version=loop.version,
        payload=event.to_bytes(),
        created_at=time.time(),
    )
    try:
        await s.writer.submit(lambda conn: unit(conn))
    except IntegrityError:
        raise InvalidInput(
            f"eventId: {body.event_id!r} was already used", field="eventId"
        ) from None
    return body.event_id, event, pmfs


def _created(content: dict[str, object]) -> Response:
    return Response(json.dumps(content), 201, media_type="application/json")


def _no_content() -> Response:
    return Response(status_code=204)


async def _event(s: Recommender, loop: Loop, request: Request) -> tuple[int, bool, Event]:
    event_id = parse_id(request.path_params["event_id"], "eventId")
    found = await s.read(lambda conn: store.find_event(conn, loop.name, event_id))
    if found is None:
        raise NotFound(f"eventId: no event {event_id!r} in this loop", field="eventId")
    pk, activated, payload = found
    return pk, activated, Event.from_bytes(payload)


@route("serve", "InvalidRewardRequest")
async def reward(request: Request, s: Recommender, loop: Loop) -> Response:
    value = parse_reward(await read_body(request, s.settings.max_body_bytes))
    pk, _, event = await _event(s, loop, request)
    if event.slots[0].id is not None:
        raise InvalidInput(
            "eventId: a multi-slot event takes its rewards at multislot/events/{eventId}/reward",
            field="eventId",
        )
    await s.writer.submit(lambda conn: store.add_rewards(conn, pk, [(0, value)]))
    return _no_content()


@route("serve", "InvalidRewardRequest")
async def reward_multislot(request: Request, s: Recommender, loop: Loop) -> Response:
    body = await read_body(request, s.settings.max_body_bytes)
    pk, _, event = await _event(s, loop, request)
    values = parse_multislot_reward(body, [slot.id for slot in event.slots])
    await s.writer.submit(lambda conn: store.add_rewards(conn, pk, values))
    return _no_content()


@route("serve", "InvalidEventIdToActivate")
async def activate(request: Request, s: Recommender, loop: Loop) -> Response:
    pk, activated, _ = await _event(s, loop, request)
    if not activated:

        def unit(conn: Connection) -> None:
            store.activate(conn, pk)

        await s.writer.submit(unit)
    return _no_content()


def serving_routes() -> list[tuple[str, str, Handler]]:
    return [
        ("POST", "/rank", rank),
        ("POST", "/events/{event_id:path}/reward", reward),
        ("POST", "/events/{event_id:path}/activate", activate),
        ("POST", "/multislot/rank", rank_multislot),
        ("POST", "/multislot/events/{event_id:path}/reward", reward_multislot),
        ("POST", "/multislot/events/{event_id:path}/activate", activate),
    ]


def personalizer_app(admin_routes: list[tuple[str, str, Handler]]) -> Starlette:
    """Every route under each version prefix; unknown paths answer in Personalizer's shape."""
    routes: list[BaseRoute] = [
        Route(prefix + path, handler, methods=[method])
        for prefix in VERSION_PREFIXES
        for method, path, handler in [*serving_routes(), *admin_routes]
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error(NotFound(f"no Personalizer route {request.url.path}", field="path"))
        return error(SlatebanditError(str(exc.detail)) if exc.status_code >= 500 else _status(exc))

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def _status(exc: HTTPException) -> SlatebanditError:
    error_ = SlatebanditError(str(exc.detail))
    error_.status = exc.status_code
    return error_
