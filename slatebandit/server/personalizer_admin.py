"""Personalizer's administration routes: service and policy configuration, the model (export,
import, reset, properties) and the log. All need the ``admin`` scope. Offline evaluations are
in ``personalizer_evaluations``."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from slatebandit.errors import (
    InvalidInput,
)
from slatebandit.logging import personalizer as store
from slatebandit.personalizer.configuration import (
    PolicyConfiguration,
    ServiceConfiguration,
    iso_time,
)
from slatebandit.personalizer.loops import Loop, new_model
from slatebandit.personalizer.models import check_arguments, check_model
from slatebandit.recommender import Recommender
from slatebandit.server.codec import read_body, read_bytes
from slatebandit.server.personalizer import Handler, route

log = logging.getLogger(__name__)
MODEL_BYTES = 256 * 1024 * 1024  # largest model import accepted


def json_response(content: Any, status: int = 200) -> Response:
    return Response(json.dumps(content), status, media_type="application/json")


async def write_loop(
    s: Recommender,
    loop: Loop,
    service: ServiceConfiguration,
    policy: PolicyConfiguration,
    reset: bool,
) -> None:
    def unit(conn) -> None:  # type: ignore[no-untyped-def]
        store.write_loop(conn, loop.name, service.to_store(), policy.to_json())
        if reset:
            new_model(conn, loop.name, policy, "reset")

    await s.writer.submit(unit)
    await asyncio.to_thread(s.loops.refresh)


@route("admin", "InvalidServiceConfiguration")
async def get_service(request: Request, s: Recommender, loop: Loop) -> Response:
    body = loop.service.to_json()
    metrics = await s.read(lambda conn: apprentice_metrics(conn, loop))
    if metrics is not None:
        body["latestApprenticeModeMetrics"] = metrics
    return json_response(body)


@route("admin", "InvalidServiceConfiguration")
async def put_service(request: Request, s: Recommender, loop: Loop) -> Response:
    service = ServiceConfiguration.from_json(await read_body(request, s.settings.max_body_bytes))
    await write_loop(s, loop, service, loop.policy, reset=False)
    return json_response(service.to_json())


@route("admin", "InvalidPolicyConfiguration")
async def get_policy(request: Request, s: Recommender, loop: Loop) -> Response:
    return json_response(loop.policy.to_json())


@route("admin", "InvalidPolicyConfiguration")
async def put_policy(request: Request, s: Recommender, loop: Loop) -> Response:
    policy = PolicyConfiguration.from_json(await read_body(request, s.settings.max_body_bytes))
    await asyncio.to_thread(check_arguments, policy)
    # VW cannot change a model's arguments: new arguments start a new model, as on Azure.
    await write_loop(
        s, loop, loop.service.edited(), policy, reset=policy.vw_args != loop.policy.vw_args
    )
    return json_response(policy.to_json())


@route("admin", "InvalidPolicyConfiguration")
async def delete_policy(request: Request, s: Recommender, loop: Loop) -> Response:
    policy = PolicyConfiguration()
    await write_loop(
        s, loop, loop.service.edited(), policy, reset=policy.vw_args != loop.policy.vw_args
    )
    return json_response(policy.to_json())


@route("admin")
async def get_model(request: Request, s: Recommender, loop: Loop) -> Response:
    data = await s.read(lambda conn: store.model_bytes(conn, loop.version))
    return Response(data, 200, media_type="application/octet-stream")


@route("admin")
async def put_model(request: Request, s: Recommender, loop: Loop) -> Response:
    data = await read_bytes(request, MODEL_BYTES)
    if not data:
        raise InvalidInput("body: the model file is empty", field="body")
    arguments = await asyncio.to_thread(check_model, loop.policy.vw_args, data)
    await s.writer.submit(
        lambda conn: new_model(conn, loop.name, loop.policy, "imported", data, arguments)
    )
    await asyncio.to_thread(s.loops.refresh)
    return Response(status_code=204)


@route("admin")
async def reset_model(request: Request, s: Recommender, loop: Loop) -> Response:
    await s.writer.submit(lambda conn: new_model(conn, loop.name, loop.policy, "reset"))
    await asyncio.to_thread(s.loops.refresh)
    return Response(status_code=204)


@route("admin")
async def model_properties(request: Request, s: Recommender, loop: Loop) -> Response:
    def query(conn: Connection) -> tuple[store.ModelVersion, float | None]:
        latest = store.latest_model(conn, loop.name)
        assert latest is not None
        return latest, store.lineage_start(conn, loop.name)

    latest, created = await s.read(query)
    body: dict[str, Any] = {
        "creationTime": iso_time(created or latest.created_at),
        "lastModifiedTime": iso_time(latest.created_at),
        # Ours, beyond Personalizer's two fields:
        "version": latest.version,
        "origin": latest.origin,
        "examples": latest.examples,
    }
    return json_response(body)


def apprentice_metrics(conn: Connection, loop: Loop) -> dict[str, Any] | None:
    """Personalizer's ``latestApprenticeModeMetrics`` since the model's lineage began: events
    the learner compared with the baseline, how many it would have imitated (its first choice
    was the baseline), and the baseline's rewards in all of them and in those."""
    since = store.lineage_start(conn, loop.name) or 0.0
    got = store.agreement(conn, loop.name, since)
    if got.compared == 0 and loop.service.learning_mode != "Apprentice":
        return None
    last = store.latest_model(conn, loop.name)
    assert last is not None
    return {
        "lastBatchMetrics": {  # the newest checkpoint's events
            "numberOfEvents": last.compared,
            "sumOfRewards": last.rewards,
            "numberOfImitatedEvents": last.agreed,
            "sumOfImitatedRewards": last.agreed_rewards,
        },
        "startTime": iso_time(since),
        "numberOfEvents": got.compared,
        "sumOfRewards": got.rewards,
        "numberOfImitatedEvents": got.agreed,
        "sumOfImitatedRewards": got.agreed_rewards,
        "lastProcessedEventTime": None if got.last_at is None else iso_time(got.last_at),
    }


@route("admin")
async def log_properties(request: Request, s: Recommender, loop: Loop) -> Response:
    first, last, count = await s.read(lambda conn: store.log_range(conn, loop.name))
    date_range = (
        {} if first is None or last is None else {"from": iso_time(first), "to": iso_time(last)}
    )
    return json_response({"dateRange": date_range, "events": count})


@route("admin")
async def delete_logs(request: Request, s: Recommender, loop: Loop) -> Response:
    await s.writer.submit(lambda conn: store.delete_events(conn, loop.name))
    return Response(status_code=204)


def admin_routes() -> list[tuple[str, str, Handler]]:
    return [
        ("GET", "/configurations/service", get_service),
        ("PUT", "/configurations/service", put_service),
        ("GET", "/configurations/policy", get_policy),
        ("PUT", "/configurations/policy", put_policy),
        ("DELETE", "/configurations/policy", delete_policy),
        ("GET", "/model", get_model),
        ("PUT", "/model", put_model),
        ("DELETE", "/model", reset_model),
        ("GET", "/model/properties", model_properties),
        ("GET", "/logs/properties", log_properties),
        ("DELETE", "/logs", delete_logs),
    ]
