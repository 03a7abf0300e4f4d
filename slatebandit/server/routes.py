"""HTTP handlers. Each validates first, writes through the group-commit writer, and answers
only after the commit that holds its record (a 2xx means durable)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace

from pydantic import ValidationError
from sqlalchemy import Connection, select
from starlette.requests import Request
from starlette.responses import Response

from slatebandit.bandit import SharedFeatures, valued
from slatebandit.errors import DatabaseUnavailable, InvalidInput, NotFound, PayloadTooLarge
from slatebandit.logging import (
    DecisionRecord,
    Item,
    ShownSlot,
    decision_user,
    delete_item,
    insert_event,
    insert_reward,
    upsert_items,
)
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
from slatebandit.logging.privacy import REDACTED
from slatebandit.logging.releases import list_canaries
from slatebandit.logging.schema import items as items_table
from slatebandit.logging.spool import SpooledEvent, SpooledReward
from slatebandit.policies import Query, follow_champion
from slatebandit.policies.explain import contributions, reasons
from slatebandit.retrieval import (
    EVENT_WEIGHTS,
    SOURCES,
    context_tokens,
    generate,
)
from slatebandit.server.codec import read_body, respond
from slatebandit.server.outage import SPOOLED
from slatebandit.server.schemas import (
    MAX_ITEMS_PER_REQUEST,
    EventRequest,
    RewardRequest,
    SlateRequest,
    invalid,
    validate,
)
from slatebandit.server.services import for_request

PROFILE_TOP = 5  # top categories and brands of the user's state that reach the scorer
CATALOG_BODY_FACTOR = 16  # catalog uploads may be this many times MAX_BODY_BYTES
GATE_VERDICTS = 20  # the latest release verdicts shown by GET /v1/models
CANARIES = 10  # ...and the latest canaries, with their figures


_services = for_request


async def create_slate(request: Request) -> Response:
    s = _services(request, "serve")
    body = validate(SlateRequest, await read_body(request, s.settings.max_body_bytes))
    k = s.settings.default_k if body.k is None else body.k
    if k > s.settings.max_k:
        raise InvalidInput(f"k: must be at most {s.settings.max_k}", field="k")

    catalog = s.store.catalog
    user_id = s.user_key(body.user_id)  # as stored: pseudonymised if the server does
    user, batch = await s.user(user_id)
    session_keys = [catalog.key_of[i] for i in body.session_items if i in catalog.key_of]
    exclude_keys = {catalog.key_of[i] for i in body.exclude if i in catalog.key_of}
    recent = [catalog.category_names[catalog.category[key]] for key in user.recent_keys(5)]
    profile = [valued(f"tc={c}", share) for c, share in user.shares("categories", PROFILE_TOP)]
    profile += [valued(f"tb={b}", share) for b, share in user.shares("brands", PROFILE_TOP)]
    profile += batch
    shared = SharedFeatures.build(body.context, recent, profile=profile)
    explain = _flag(request, "explain")
    filters = None if body.filters is None else body.filters.to_filters()
    allowed = await s.allowed(filters) if filters else None
    candidates = generate(
        s.store,
        user,
        session_keys,
        exclude_keys,
        s.settings.candidates,
        allowed=allowed,
        excluded=user.excluded(s.exclusions, time.time()),
        context=context_tokens(shared.context),
    )
    policy, experiment, arm = await s.policy_for(user_id)
    query = Query(shared, candidates)
    slate = policy.slate(s.store, query, k, s.rng)
    # Explained before the commit: once the decision is logged, nothing may fail the answer.
    why = reasons(slate, s.store, [*session_keys, *user.recent_keys(5)])
    detail = (
        await asyncio.to_thread(contributions, policy, slate, s.store, query) if explain else None
    )

    event_id, now = uuid.uuid4().hex, time.time()
    keys = [int(candidates.keys[pick.index]) for pick in slate.picks]
    shown = [
        ShownSlot(
            slot=j,
            item_key=key,
            propensity=pick.propensity,
            kind=pick.kind,
            source=SOURCES[candidates.sources[pick.index]],
            score=float(slate.scores[pick.index]),
        )
        for j, (pick, key) in enumerate(zip(slate.picks, keys, strict=True))
    ]
    record = DecisionRecord(
        event_id=event_id,
        created_at=now,
        user_id=user_id,
        policy=slate.policy,
        model_version=slate.model_version,
        payload=slate.payload().encode(),
        shown=tuple(shown),
        experiment=experiment,
        arm=arm,
    )
    # Committed, or spooled while the database is away; the slate is served either way.
    decision, logged = await s.outage.log_decision(s.writer.submit, record)
    for key in keys:
        catalog.add_impressions(key)
    if decision is not None:
        s.remember_decision(event_id, replace(decision, context=tuple(shared.context.items())))
    items: list[dict[str, object]] = [
        {
            "item_id": catalog.item_ids[slot.item_key],
            "slot": slot.slot,
            "propensity": slot.propensity,
            "kind": slot.kind,
            "source": slot.source,
            "score": slot.score,
            "reason": reason,
        }
        for slot, reason in zip(shown, why, strict=True)
    ]
    if detail is not None:
        for item, features in zip(items, detail, strict=True):
            item["explanation"] = {"features": features}
    answer: dict[str, object] = {
        "event_id": event_id,
        "policy": slate.policy,
        "model_version": slate.model_version,
        "logged": logged,
        "items": items,
    }
    if experiment is not None:
        answer["experiment"] = experiment
    if arm is not None:  # an experiment's arm, or ``canary``
        answer["arm"] = arm
    return respond(request, answer)


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
    reward = s.rewards.get(body.type) if body.reward is None else body.reward
    if reward is None:
        raise InvalidInput(
            f"type: no reward given and {body.type!r} is not in SLATEBANDIT_REWARD_TABLE",
            field="type",
        )
    outage = s.outage
    try:
        decision = await s.shown_decision(body.event_id)
    except DatabaseUnavailable:
        outage.failed()
        decision = None
    if decision is None and not outage.spooling():
        raise NotFound(f"event_id: no decision {body.event_id}", field="event_id")
    if decision is not None and decision.user_id == REDACTED:
        raise NotFound(f"event_id: decision {body.event_id} was erased", field="event_id")
    key = s.store.catalog.key_of.get(body.item_id)
    if key is None or (decision is not None and key not in decision.item_keys):
        raise InvalidInput(
            f"item_id: {body.item_id!r} was not shown in this decision", field="item_id"
        )
    now = time.time()
    record = SpooledReward(body.event_id, key, body.type, reward, now)
    answer = {**body.model_dump(), "reward": reward}
    if decision is None or decision.decision_id == SPOOLED or outage.degraded:
        # Its decision may be in a spool, or the database is away: checked when shipped.
        await outage.append(record)
        return respond(request, {**answer, "duplicate": None, "logged": "spool"}, 202)
    # A positive reward is also something the shopper did: it shapes their next slate like an
    # event (a negative one, a dislike, is not folded into what they like).
    kind = body.type if body.type in EVENT_WEIGHTS else "click"
    observe = s.observation(decision.user_id, key, kind, now)

    def unit(conn: Connection) -> tuple[bool, tuple[int, bytes] | None]:
        if decision_user(conn, decision.decision_id) != decision.user_id:
            # The user was erased (on this worker or another) after the decision was cached.
            raise NotFound(f"event_id: decision {body.event_id} was erased", field="event_id")
        stored = insert_reward(
            conn,
            decision_id=decision.decision_id,
            item_key=key,
            type=body.type,
            reward=reward,
            created_at=now,
        )
        return stored, observe(conn) if stored and reward > 0 else None

    try:
        stored, state = await outage.in_time(s.writer.submit(unit))
    except DatabaseUnavailable:
        outage.failed()
        await outage.append(record)
        return respond(request, {**answer, "duplicate": None, "logged": "spool"}, 202)
    if state is not None:
        s.remember_state(decision.user_id, state)
    if stored and reward > 0:
        s.store.catalog.bump_popularity(key, reward)
        s.store.catalog.bump_context(context_tokens(dict(decision.context)), key, reward)
    return respond(request, {**answer, "duplicate": not stored, "logged": "database"}, 202)


async def post_event(request: Request) -> Response:
    s = _services(request, "serve")
    body = validate(EventRequest, await read_body(request, s.settings.max_body_bytes))
    catalog = s.store.catalog
    key = catalog.key_of.get(body.item_id)
    if key is None:
        raise NotFound(f"item_id: no item {body.item_id!r}", field="item_id")
    now, ref = time.time(), uuid.uuid4().hex
    user_id = s.user_key(body.user_id)
    observe = s.observation(user_id, key, body.type, now)

    def unit(conn: Connection) -> tuple[int, bytes]:
        insert_event(conn, user_id=user_id, item_key=key, type=body.type, created_at=now, ref=ref)
        return observe(conn)

    if not s.outage.degraded:
        try:
            s.remember_state(user_id, await s.outage.in_time(s.writer.submit(unit)))
            catalog.bump_popularity(key, EVENT_WEIGHTS[body.type], now)
            return respond(request, {**body.model_dump(), "logged": "database"}, 202)
        except DatabaseUnavailable:
            s.outage.failed()
    # Folded into the user's state when shipped: until then their slates do not show it.
    await s.outage.append(SpooledEvent(user_id, key, body.type, now, ref))
    return respond(request, {**body.model_dump(), "logged": "spool"}, 202)


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
    s = _services(request, None)
    health = s.outage.health()
    # Degraded: the database is away, or records wait in a spool to be shipped.
    away = health["database"] != "ok" or health["spool"]["segments"]  # type: ignore[index]
    return respond(
        request,
        {
            "status": "degraded" if away else "ok",
            **health,
            "items": len(s.store.index),
            "policy": s.settings.policy,
            "experiment": None if s.experiments.running is None else s.experiments.running.name,
            "model_version": s.policy.scorer.version,
            "embeddings_version": s.store.factors.version,
        },
    )


def _catalog_rows(conn: Connection, keys: list[int]) -> list:  # type: ignore[type-arg]
    rows: list = []  # type: ignore[type-arg]
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        rows += conn.execute(select(*CATALOG_COLUMNS).where(items_table.c.key.in_(chunk))).all()
    return sorted(rows, key=lambda row: row.rev)
