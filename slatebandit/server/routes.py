"""HTTP handlers. Each validates first, writes through the group-commit writer, and answers
only after the commit that holds its record (a 2xx means durable)."""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy import Connection, select
from starlette.requests import Request
from starlette.responses import Response

from slatebandit.errors import InvalidInput, NotFound, PayloadTooLarge
from slatebandit.items import Item
from slatebandit.logging import delete_item, upsert_items
from slatebandit.logging.items import CATALOG_COLUMNS
from slatebandit.logging.learning import late_rewards
from slatebandit.logging.models import (
    champion,
    gate_verdicts,
    get_version,
    list_versions,
    operator_release,
    previous_champion,
    require_model,
)
from slatebandit.logging.releases import list_canaries
from slatebandit.logging.schema import items as items_table
from slatebandit.policies import follow_champion
from slatebandit.server import metrics
from slatebandit.server.codec import read_body, respond
from slatebandit.server.schemas import (
    MAX_ITEMS_PER_REQUEST,
    EventRequest,
    RewardRequest,
    SlateRequest,
    invalid,
    validate,
)
from slatebandit.server.services import for_request

CATALOG_BODY_FACTOR = 16  # catalog uploads may be this many times MAX_BODY_BYTES
GATE_VERDICTS = 20  # the latest release verdicts shown by GET /v1/models
CANARIES = 10  # ...and the latest canaries, with their figures


_services = for_request


async def create_slate(request: Request) -> Response:
    dry_run = _flag(request, "dry_run")
    if dry_run:
        request.scope[metrics.DRY_RUN] = True
    # A dry run shows every candidate's score: an analyst's view, not a storefront's.
    s = _services(request, "analyst" if dry_run else "serve")
    body = validate(SlateRequest, await read_body(request, s.settings.max_body_bytes))
    query = body.to_query(explain=_flag(request, "explain"), dry_run=dry_run)
    decision = await s.decide(query)
    if not dry_run:
        metrics.slate_served(decision)
    return respond(request, decision.to_dict())


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name)
    if value is None or value.lower() in ("false", "0", ""):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise InvalidInput(f"{name}: must be true or false, got {value!r}", field=name)


async def post_reward(request: Request) -> Response:
    s = _services(request, "serve")
    body = validate(RewardRequest, await read_body(request, s.settings.max_body_bytes))
    done = await s.reward(body.event_id, body.item_id, body.type, body.reward, body.value)
    if not done.duplicate:
        metrics.reward_accepted(body.type, s.rewards)
    answer = {**body.model_dump(), "reward": done.reward, "duplicate": done.duplicate}
    return respond(request, {**answer, "logged": done.logged}, 202)


async def post_event(request: Request) -> Response:
    s = _services(request, "serve")
    body = validate(EventRequest, await read_body(request, s.settings.max_body_bytes))
    done = await s.event(body.user_id, body.item_id, body.type)
    metrics.event_accepted(body.type)
    return respond(request, {**body.model_dump(), "logged": done.logged}, 202)


async def put_items(request: Request) -> Response:
    s = _services(request, "catalog")
    data = await read_body(request, s.settings.max_body_bytes * CATALOG_BODY_FACTOR)
    if isinstance(data, dict) and set(data) == {"items"}:
        data = data["items"]
    if not isinstance(data, list) or not data:
        raise InvalidInput("body: must be a non-empty list of items", field="body")
    if len(data) > MAX_ITEMS_PER_REQUEST:
        raise PayloadTooLarge(
            f"body: at most {MAX_ITEMS_PER_REQUEST} items per request", field="body"
        )
    batch = []
    for i, raw in enumerate(data):
        try:
            batch.append(Item.model_validate(raw))
        except ValidationError as exc:
            raise invalid(exc, prefix=f"items[{i}]") from None

    def unit(conn: Connection) -> list:  # type: ignore[type-arg]
        keys = [key for key, _ in upsert_items(conn, batch)]
        return _catalog_rows(conn, keys)

    rows = await s.writer.submit(unit)
    await s.store.apply(rows)
    return respond(request, {"upserted": len(rows)})


async def remove_item(request: Request) -> Response:
    s = _services(request, "catalog")
    item_id = request.path_params["item_id"]

    def unit(conn: Connection) -> list | None:  # type: ignore[type-arg]
        changed = delete_item(conn, item_id)
        return None if changed is None else _catalog_rows(conn, [changed[0]])

    rows = await s.writer.submit(unit)
    if rows is None:
        raise NotFound(f"item_id: no item {item_id!r}", field="item_id")
    await s.store.apply(rows)
    return respond(request, {"deleted": item_id})


async def list_models(request: Request) -> Response:
    s = _services(request, "analyst")  # a read-only view

    def read(conn: Connection) -> dict[str, object]:
        return {
            "champion": champion(conn),
            "late_rewards": late_rewards(conn),
            "versions": [v.to_dict() for v in list_versions(conn)],
            "gate": gate_verdicts(conn, limit=GATE_VERDICTS),
            "canaries": [c.to_dict() for c in list_canaries(conn, limit=CANARIES)],
        }

    body = await s.read(read)
    running = s.canaries.running
    canary = None if running is None else {"id": running.id, "version": running.version}
    return respond(request, {**body, "serving": s.policy.scorer.version, "canary": canary})


async def rollback_model(request: Request) -> Response:
    s = _services(request, "admin")

    def unit(conn: Connection) -> int | None:
        previous = previous_champion(conn)
        if previous is not None:
            operator_release(conn, previous, "rollback", "rolled back by an operator (HTTP)")
        return previous

    previous = await s.writer.submit(unit)
    if previous is None:
        raise NotFound("version: there is no earlier champion to roll back to", field="version")
    await follow_champion(s.engine, s.policy)
    return respond(request, {"champion": previous, "serving": s.policy.scorer.version})


async def promote_model(request: Request) -> Response:
    s = _services(request, "admin")
    version = request.path_params["version"]
    if not 1 <= version < 2**31:  # the path takes any integer; versions are 32-bit
        raise NotFound(f"version: no model version {version}", field="version")

    def unit(conn: Connection) -> bool:
        if get_version(conn, version) is None:
            return False
        require_model(conn, version)  # a pruned version cannot serve: 404 saying so
        operator_release(conn, version, "promote", "promoted by an operator (HTTP)")
        return True

    if not await s.writer.submit(unit):
        raise NotFound(f"version: no model version {version}", field="version")
    await follow_champion(s.engine, s.policy)  # this worker at once; the others within a poll
    return respond(request, {"champion": version, "serving": s.policy.scorer.version})


async def healthz(request: Request) -> Response:
    return respond(request, _services(request, None).health())


def _catalog_rows(conn: Connection, keys: list[int]) -> list:  # type: ignore[type-arg]
    rows: list = []  # type: ignore[type-arg]
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        rows += conn.execute(select(*CATALOG_COLUMNS).where(items_table.c.key.in_(chunk))).all()
    return sorted(rows, key=lambda row: row.rev)
