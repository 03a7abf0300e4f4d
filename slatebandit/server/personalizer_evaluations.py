"""Personalizer's offline evaluations over HTTP (``personalizer.evaluation`` computes them),
and applying a policy from one. All need the ``admin`` scope.

An evaluation runs on a worker thread; the request that creates one waits up to
``EVALUATION_WAIT`` seconds for it, so a small log answers "Succeeded" at once and a large one
"Running" (the client then polls GET). The 2022-09-01-preview form creates with
``PUT evaluations/{id}`` (200) and lists in pages (``{value, nextLink}``); v1.0 and
v1.1-preview.3 create with ``POST evaluations`` (201 and the evaluation) and list a plain array.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Any

from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import Response

from slatebandit.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    SlatebanditError,
    TooManyRequests,
)
from slatebandit.logging import personalizer as store
from slatebandit.personalizer.configuration import PolicyConfiguration, parse_time
from slatebandit.personalizer.evaluation import evaluate, render
from slatebandit.personalizer.loops import Loop
from slatebandit.personalizer.models import check_arguments
from slatebandit.recommender import Recommender
from slatebandit.server.codec import read_body
from slatebandit.server.personalizer import Handler, route
from slatebandit.server.personalizer_admin import json_response, write_loop

log = logging.getLogger(__name__)
EVALUATION_WAIT = 10.0
INTERVALS = (5, 60, 360, 720, 1440)  # minutes, as Personalizer offers them
_EVALUATION_ID = re.compile(r"^[A-Za-z0-9_.-]{1,256}$")
_WHOLE = re.compile(r"[0-9]{1,9}")  # ASCII digits only: "²".isdigit() is True
RUNNING, QUEUED = 1, 4  # evaluations at a time per worker, and waiting; past that, 429
PAGE = 100  # evaluations per page of the paged list
LEGACY_LIST = 10_000  # v1.0 lists are not paged


class EvaluationExists(Conflict):
    personalizer_code = "EvaluationAlreadyExists"


class EvaluationNotFound(NotFound):
    personalizer_code = "EvaluationNotFound"


def _legacy(request: Request) -> bool:
    """v1.0 and v1.1-preview.3 paths: bare-array lists, lower-case evaluation status."""
    return "/v1." in request.url.path


def _evaluation_request(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput("body: must be a JSON object", field="body")
    name = body.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 256:
        raise InvalidInput("name: must be a string of 1 to 256 characters", field="name")
    start = parse_time(body.get("startTime"), "startTime")
    end = parse_time(body.get("endTime"), "endTime")
    if end <= start:
        raise InvalidInput("endTime: must be after startTime", field="endTime")
    raw = body.get("policies") or []
    if not isinstance(raw, list) or len(raw) > 10:
        raise InvalidInput(
            "policies: must be a list of at most 10 {name, arguments}", field="policies"
        )
    policies = []
    for i, item in enumerate(raw):
        try:
            policy = PolicyConfiguration.from_json(item)
            check_arguments(policy)
        except InvalidInput as exc:
            raise InvalidInput(
                f"policies[{i}].{exc.message}", field=f"policies[{i}].{exc.field}"
            ) from None
        policies.append(policy.to_json())
    optimize = body.get("enablePolicyOptimization", body.get("enableOfflineExperimentation", False))
    if not isinstance(optimize, bool):
        raise InvalidInput(
            "enablePolicyOptimization: must be true or false", field="enablePolicyOptimization"
        )
    return {"name": name, "start": start, "end": end, "policies": policies, "optimize": optimize}


async def _create_evaluation(
    request: Request, s: Recommender, loop: Loop, evaluation_id: str
) -> dict[str, Any]:
    if not _EVALUATION_ID.match(evaluation_id):
        raise InvalidInput(
            "evaluationId: 1 to 256 letters, digits, '-', '_' or '.'", field="evaluationId"
        )
    raw = await read_body(request, s.settings.max_body_bytes)
    body = await asyncio.to_thread(_evaluation_request, raw)  # builds VW for each policy
    if len(s.loops.evaluations) >= RUNNING + QUEUED:
        raise TooManyRequests(
            f"{len(s.loops.evaluations)} evaluations are running or queued on this worker; "
            "create this one when one has finished"
        )
    exists = EvaluationExists(
        f"evaluationId: {evaluation_id!r} already exists", field="evaluationId"
    )
    if await s.read(lambda conn: store.get_evaluations(conn, loop.name, evaluation_id)):
        raise exists
    try:
        created = await s.writer.submit(
            lambda conn: store.put_evaluation(conn, loop.name, evaluation_id, body)
        )
    except IntegrityError:  # the same id, created by a concurrent request
        raise exists from None

    def run() -> None:
        result, error = None, None
        try:
            result = evaluate(s.engine, loop.name, body, loop.service, loop.policy)
        except SlatebanditError as exc:
            error = exc.message
        except Exception:
            log.exception("evaluation %s failed", evaluation_id)
            error = "internal error"
        with s.engine.begin() as conn:  # not if the id was deleted and created again meanwhile
            store.finish_evaluation(conn, loop.name, evaluation_id, created, result, error)

    task = asyncio.get_running_loop().run_in_executor(s.loops.evaluation_pool, run)
    s.loops.evaluations.add(task)
    task.add_done_callback(s.loops.evaluations.discard)
    try:
        await asyncio.wait_for(asyncio.shield(task), EVALUATION_WAIT)
    except TimeoutError:
        pass
    found = await s.read(lambda conn: store.get_evaluations(conn, loop.name, evaluation_id))
    return render(found[0], legacy=_legacy(request))


@route("admin", "InvalidEvaluationContract")
async def put_evaluation(request: Request, s: Recommender, loop: Loop) -> Response:
    await _create_evaluation(request, s, loop, request.path_params["evaluation_id"])
    return Response(status_code=200)


@route("admin", "InvalidEvaluationContract")
async def post_evaluation(request: Request, s: Recommender, loop: Loop) -> Response:
    evaluation_id = uuid.uuid4().hex
    body = await _create_evaluation(request, s, loop, evaluation_id)
    response = json_response(body, 201)
    response.headers["location"] = str(request.url).split("?")[0].rstrip("/") + "/" + evaluation_id
    return response


@route("admin")
async def get_evaluation(request: Request, s: Recommender, loop: Loop) -> Response:
    evaluation_id = request.path_params["evaluation_id"]
    found = await s.read(lambda conn: store.get_evaluations(conn, loop.name, evaluation_id))
    if not found:
        raise EvaluationNotFound(
            f"evaluationId: no evaluation {evaluation_id!r}", field="evaluationId"
        )
    q = request.query_params
    interval = _int(q.get("intervalInMinutes"), "intervalInMinutes", 5)
    if interval not in INTERVALS:
        raise InvalidInput(
            f"intervalInMinutes: one of {', '.join(map(str, INTERVALS))}", field="intervalInMinutes"
        )
    window = q.get("window", "Expanding")
    if window not in ("Expanding", "Rolling"):
        raise InvalidInput("window: Expanding or Rolling", field="window")
    start = parse_time(q["startTime"], "startTime") if "startTime" in q else None
    end = parse_time(q["endTime"], "endTime") if "endTime" in q else None
    rolling, legacy = window == "Rolling", _legacy(request)
    return json_response(
        render(
            found[0],
            start=start,
            end=end,
            interval_minutes=interval,
            rolling=rolling,
            legacy=legacy,
        )
    )


@route("admin")
async def delete_evaluation(request: Request, s: Recommender, loop: Loop) -> Response:
    evaluation_id = request.path_params["evaluation_id"]
    await s.writer.submit(lambda conn: store.delete_evaluation(conn, loop.name, evaluation_id))
    return Response(status_code=204)


@route("admin")
async def list_evaluations(request: Request, s: Recommender, loop: Loop) -> Response:
    q = request.query_params
    skip = _int(q.get("skip"), "skip", 0)
    legacy = _legacy(request)  # no paging: every evaluation, up to a bound
    top = LEGACY_LIST if legacy else min(_int(q.get("top"), "top", PAGE), PAGE)
    if top < 1:
        raise InvalidInput("top: must be at least 1", field="top")
    rows = await s.read(lambda conn: store.get_evaluations(conn, loop.name, skip=skip, top=top + 1))
    if legacy:  # a plain array of whole evaluations
        return json_response([render(row, legacy=True) for row in rows[:top]])
    page = [_summary(render(row)) for row in rows[:top]]
    body: dict[str, Any] = {"value": page}
    if len(rows) > top:
        body["nextLink"] = str(request.url.include_query_params(skip=skip + top, top=top))
    return json_response(body)


def _summary(evaluation: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "name", "startTime", "endTime", "creationTime", "evaluationType", "status")
    return {k: evaluation[k] for k in keys}


def _int(raw: str | None, field: str, default: int) -> int:
    if raw is None:
        return default
    if not _WHOLE.fullmatch(raw):
        raise InvalidInput(f"{field}: must be a whole number below 10^9", field=field)
    return int(raw)


@route("admin", "InvalidPolicyConfiguration")
async def apply_from_evaluation(request: Request, s: Recommender, loop: Loop) -> Response:
    """Make a policy of a finished evaluation the loop's policy (a new model, as any change of
    arguments)."""
    body = await read_body(request, s.settings.max_body_bytes)
    if not isinstance(body, dict) or not isinstance(body.get("evaluationId"), str):
        raise InvalidInput("evaluationId: is required", field="evaluationId")
    if not isinstance(body.get("policyName"), str):
        raise InvalidInput("policyName: is required", field="policyName")
    evaluation_id, name = body["evaluationId"], body["policyName"]
    found = await s.read(lambda conn: store.get_evaluations(conn, loop.name, evaluation_id))
    if not found:
        raise NotFound(f"evaluationId: no evaluation {evaluation_id!r}", field="evaluationId")
    result = found[0]["result"] or {}
    arguments = next(
        (
            p["arguments"]
            for p in result.get("policies", [])
            if p["name"] == name and p["arguments"]
        ),
        None,
    )
    if arguments is None:
        raise InvalidInput(
            f"policyName: evaluation {evaluation_id!r} has no learned policy {name!r}",
            field="policyName",
        )
    policy = PolicyConfiguration.from_json({"name": name, "arguments": arguments})
    reset = policy.vw_args != loop.policy.vw_args
    await write_loop(s, loop, loop.service.edited(), policy, reset=reset)
    return Response(status_code=204)


def evaluation_routes() -> list[tuple[str, str, Handler]]:
    return [
        ("POST", "/configurations/applyFromEvaluation", apply_from_evaluation),
        ("GET", "/evaluations", list_evaluations),
        ("POST", "/evaluations", post_evaluation),
        ("PUT", "/evaluations/{evaluation_id}", put_evaluation),
        ("GET", "/evaluations/{evaluation_id}", get_evaluation),
        ("DELETE", "/evaluations/{evaluation_id}", delete_evaluation),
    ]
