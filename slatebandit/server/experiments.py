"""A/B experiment routes: define (admin), read and report (analyst)."""

from __future__ import annotations

import asyncio

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from slatebandit.errors import InvalidInput
from slatebandit.policies.experiment_book import (
    experiment_report,
    get_experiment,
    list_experiments,
    put_experiment,
    stop_experiment,
)
from slatebandit.policies.specs import parse_spec
from slatebandit.server.codec import read_body, respond
from slatebandit.server.services import for_request


async def put(request: Request) -> Response:
    s = for_request(request, "admin")
    name = request.path_params["name"]
    body = await read_body(request, s.settings.max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidInput("body: an object with arms (and control)", field="body")
    arms = body.get("arms")
    if isinstance(arms, list):  # each arm's policy must load here (vw@V: the version exists)
        for i, arm in enumerate(arms):
            policy = arm.get("policy") if isinstance(arm, dict) else None
            field = f"arms[{i}].policy"
            parse_spec(policy, field)  # type: ignore[arg-type]
            await asyncio.to_thread(s.policies.get, str(policy).strip(), field)

    def unit(conn: Connection) -> tuple[dict[str, object], bool]:
        experiment, created = put_experiment(conn, name, body)
        return experiment.to_dict(), created

    answer, created = await s.writer.submit(unit)
    await asyncio.to_thread(s.experiments.refresh)  # this worker at once; others within a poll
    return respond(request, answer, 201 if created else 200)


async def read(request: Request) -> Response:
    s = for_request(request, "analyst")
    name = request.path_params["name"]
    return respond(request, await s.read(lambda conn: get_experiment(conn, name).to_dict()))


async def read_all(request: Request) -> Response:
    s = for_request(request, "analyst")
    found = await s.read(list_experiments)
    return respond(request, {"experiments": [e.to_dict() for e in found]})


async def delete(request: Request) -> Response:
    s = for_request(request, "admin")
    name = request.path_params["name"]
    answer = await s.writer.submit(lambda conn: stop_experiment(conn, name).to_dict())
    await asyncio.to_thread(s.experiments.refresh)
    return respond(request, answer)


async def report(request: Request) -> Response:
    s = for_request(request, "analyst")
    name = request.path_params["name"]
    return respond(request, await s.read(lambda conn: experiment_report(conn, name)))
