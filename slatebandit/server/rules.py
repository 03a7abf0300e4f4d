"""Merchandising rule routes: define and end (admin), read (catalog). What a rule does is in
``slatebandit.merchandising.rules``; every worker applies a change within a catalog poll."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from slatebandit.errors import InvalidInput, NotFound
from slatebandit.logging.rules import StoredRule, delete_rule, put_rule, rules_at
from slatebandit.server.codec import read_body, respond
from slatebandit.server.schemas import SlateFilters, _Strict, validate
from slatebandit.server.services import for_request

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_SLOT = 99  # a pin's slot: the largest SLATEBANDIT_MAX_K a storefront would set, minus one

Placement = Literal["home", "item", "cart", "category"]
Instant = float | str  # unix seconds, or ISO 8601 with a time zone


class RuleRequest(_Strict):
    action: Literal["pin", "boost", "bury", "promote", "block"]
    items: list[str] = Field(default_factory=list, max_length=1000, description="item ids")
    filter: SlateFilters | None = Field(default=None, description="as a slate's filters")
    placements: list[Placement] = Field(
        default=["home", "item", "cart", "category"], min_length=1, description="default: all"
    )
    start: Instant | None = Field(default=None, description="unix seconds or ISO 8601")
    end: Instant | None = Field(default=None, description="unix seconds or ISO 8601")
    slots: list[int] = Field(default_factory=list, max_length=100, description="pin: one per item")
    weight: float | None = Field(
        default=None, gt=0, le=10, allow_inf_nan=False, description="boost, bury: share of spread"
    )
    share: float | None = Field(
        default=None, gt=0, le=1, allow_inf_nan=False, description="promote: share of the slots"
    )

    @field_validator("items")
    @classmethod
    def _item_ids(cls, items: list[str]) -> list[str]:
        for item in items:
            if not 1 <= len(item) <= 128:
                raise ValueError("item ids are 1 to 128 characters")
        return items

    @field_validator("slots")
    @classmethod
    def _slots(cls, slots: list[int]) -> list[int]:
        if any(not 0 <= slot <= MAX_SLOT for slot in slots) or len(set(slots)) < len(slots):
            raise ValueError(f"distinct slots from 0 to {MAX_SLOT}")
        return slots

    @field_validator("start", "end")
    @classmethod
    def _instant(cls, value: Instant | None) -> float | None:
        if value is None or isinstance(value, float | int):
            return None if value is None else float(value)
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("unix seconds, or ISO 8601 with a time zone") from None
        if parsed.tzinfo is None:
            raise ValueError("an ISO 8601 time needs a time zone (Z or +hh:mm)")
        return parsed.timestamp()


def _check(rule: RuleRequest) -> None:
    """What each action needs; raised as a 400 naming the field."""
    action = rule.action
    if not rule.items and rule.filter is None:
        raise InvalidInput("items: a rule needs items, a filter, or both", field="items")
    if action == "pin":
        if rule.filter is not None:
            raise InvalidInput("filter: pin places listed items only", field="filter")
        if len(rule.slots) != len(rule.items):
            raise InvalidInput("slots: pin needs one slot per item", field="slots")
    elif rule.slots:
        raise InvalidInput(f"slots: only pin has slots, not {action}", field="slots")
    needs_weight = action in ("boost", "bury")
    if needs_weight != (rule.weight is not None):
        message = f"{action} needs a weight > 0" if needs_weight else "only boost and bury have one"
        raise InvalidInput(f"weight: {message}", field="weight")
    if (action == "promote") != (rule.share is not None):
        promote = action == "promote"
        message = "promote needs a share in (0, 1]" if promote else "only promote has one"
        raise InvalidInput(f"share: {message}", field="share")
    start, end = rule.start, rule.end
    if isinstance(start, float) and isinstance(end, float) and end <= start:
        raise InvalidInput("end: must be after start", field="end")


def _answer(rule: StoredRule) -> dict[str, object]:
    return {"name": rule.name, "version": rule.version, "updated_at": rule.created_at, **rule.body}


async def put(request: Request) -> Response:
    """``PUT /v1/rules/{name}``: define or replace a rule (its next version)."""
    s = for_request(request, "admin")
    name = request.path_params["name"]
    if not NAME.fullmatch(name):
        raise InvalidInput("name: 1 to 64 letters, digits, '.', '-' or '_'", field="name")
    body = await read_body(request, s.settings.max_body_bytes)
    rule = validate(RuleRequest, body)
    _check(rule)
    stored_body = rule.model_dump(exclude_none=True)
    stored = await s.writer.submit(lambda conn: put_rule(conn, name, stored_body))
    # This worker at once; the others within a catalog poll.
    await asyncio.to_thread(s.rules.refresh, s.engine, s.store.catalog)
    return respond(request, _answer(stored), 201 if stored.version == 1 else 200)


async def read_all(request: Request) -> Response:
    """``GET /v1/rules``: the rules in force, by name."""
    s = for_request(request, "catalog")
    found = await s.read(lambda conn: rules_at(conn))
    return respond(request, {"rules": [_answer(rule) for rule in found]})


async def delete(request: Request) -> Response:
    """``DELETE /v1/rules/{name}``: end a rule (its versions stay, for replay and audit)."""
    s = for_request(request, "admin")
    name = request.path_params["name"]

    def unit(conn: Connection) -> bool:
        return delete_rule(conn, name)

    if not await s.writer.submit(unit):
        raise NotFound(f"name: no rule {name!r} in force", field="name")
    await asyncio.to_thread(s.rules.refresh, s.engine, s.store.catalog)
    return respond(request, {"name": name, "deleted": True})
