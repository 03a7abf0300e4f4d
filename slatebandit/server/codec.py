"""JSON and msgpack on every route: request decoding with a size limit, response encoding."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
from starlette.requests import Request
from starlette.responses import Response

from slatebandit.errors import (
    InvalidInput,
    PayloadTooLarge,
    RequestTimeout,
    SlatebanditError,
    UnsupportedMediaType,
)

JSON = "application/json"
BODY_SECONDS = 30.0  # a body's time limit outside the app (the app uses its setting)
MSGPACK = "application/msgpack"
_MSGPACK_TYPES = (MSGPACK, "application/x-msgpack")


async def read_bytes(request: Request, limit: int) -> bytes:
    """The raw body; 413 past ``limit`` bytes, checked as it streams in; 408 if the client takes
    longer than ``SLATEBANDIT_BODY_TIMEOUT_SECONDS`` to send it (a slow client must not hold a
    request open for ever)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is larger than {limit} bytes", field="body")
    chunks, size = [], 0
    seconds = _body_seconds(request)
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body is larger than {limit} bytes", field="body")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {seconds:g} s", field="body"
        ) from None
    return b"".join(chunks)


def _body_seconds(request: Request) -> float:
    recommender = getattr(request.state, "recommender", None)
    if recommender is None:
        return BODY_SECONDS
    return float(recommender.settings.body_timeout_seconds)


async def read_body(request: Request, limit: int) -> Any:
    """The decoded body; 413 past ``limit`` bytes, 415 for other types, 400 when malformed."""
    raw = await read_bytes(request, limit)
    media = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
    if media in _MSGPACK_TYPES:
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
            raise InvalidInput(f"body is not valid msgpack: {exc}", field="body") from None
    if media in (JSON, "") or media.endswith("+json"):
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting
            raise InvalidInput(f"body is not valid JSON: {exc}", field="body") from None
    raise UnsupportedMediaType(
        f"content-type {media!r}: use {JSON} or {MSGPACK}", field="content-type"
    )


def respond(request: Request, content: Any, status: int = 200) -> Response:
    accept = request.headers.get("accept", "")
    if any(t in accept for t in _MSGPACK_TYPES):
        return Response(msgpack.packb(content, use_bin_type=True), status, media_type=MSGPACK)
    body = json.dumps(content, separators=(",", ":"), allow_nan=False)
    return Response(body, status, media_type=JSON)


def error_response(request: Request, error: SlatebanditError) -> Response:
    response = respond(request, error.to_dict(), error.status)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    retry_after = getattr(error, "retry_after", None)  # 429 and 503
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response
