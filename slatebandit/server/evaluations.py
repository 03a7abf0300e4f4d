"""``POST /v1/evaluations`` and ``GET /v1/evaluations/{id}``: replay for analysts over HTTP.

An evaluation runs in the worker that accepted it (``recommender.evaluations``), which writes
its progress to the ``evaluations`` table about once a second, so any worker can answer a GET.
If that worker dies, the row stops moving and GET reports it failed after ``STALE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import uuid
from functools import partial

from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import Response

from slatebandit.errors import NotFound
from slatebandit.logging.evaluations import (
    create_evaluation,
    get_evaluation,
    latest_evaluations,
)
from slatebandit.replay import ReplayOptions, parse_target
from slatebandit.server.codec import read_body, respond
from slatebandit.server.schemas import EvaluationRequest, validate
from slatebandit.server.services import for_request


def _check_targets(engine: Engine, specs: tuple[str, ...]) -> None:
    """Resolve every SPEC now, so a bad one is a 4xx and not a failed evaluation."""
    for spec in specs:
        parse_target(spec, engine).close()


async def post_evaluation(request: Request) -> Response:
    s = for_request(request, "analyst")
    body = validate(EvaluationRequest, await read_body(request, s.settings.max_body_bytes))
    options = ReplayOptions.parse(**body.model_dump())
    s.evaluations.check_room()
    await asyncio.to_thread(_check_targets, s.engine, options.policies)
    evaluation_id = uuid.uuid4().hex
    unit = partial(create_evaluation, evaluation_id=evaluation_id, request=body.model_dump())
    await s.writer.submit(lambda conn: unit(conn))
    s.evaluations.start(evaluation_id, options)
    location = f"/v1/evaluations/{evaluation_id}"
    response = respond(
        request, {"id": evaluation_id, "status": "running", "location": location}, 202
    )
    response.headers["location"] = location
    return response


async def read_evaluation(request: Request) -> Response:
    s = for_request(request, "analyst")
    evaluation_id = request.path_params["evaluation_id"]
    found = await s.read(lambda conn: get_evaluation(conn, evaluation_id))
    if found is None:
        raise NotFound(f"evaluation_id: no evaluation {evaluation_id!r}", field="evaluation_id")
    return respond(request, found)


LISTED = 20  # GET /v1/evaluations: the newest this many


async def list_evaluations(request: Request) -> Response:
    s = for_request(request, "analyst")
    found = await s.read(lambda conn: latest_evaluations(conn, LISTED))
    return respond(request, {"evaluations": found})
