"""Personalizer request bodies, checked field by field with Personalizer's limits.

Each parser returns plain values or raises ``InvalidInput`` naming the field in Personalizer's
spelling (``actions[3].id``), which the routes answer as a 400 in Personalizer's error shape.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from slatebandit.errors import InvalidInput
from slatebandit.personalizer.configuration import finite
from slatebandit.personalizer.features import namespaces
from slatebandit.personalizer.loops import SlotRequest

MAX_ID = 256  # characters in an event, action or slot id (Personalizer's limit)
MAX_SLOTS = 50  # slots in a multi-slot rank (Personalizer's limit)
WARN_ACTIONS = 50  # Personalizer's documented limit; we log above it and serve to the cap


@dataclass(frozen=True)
class RankRequest:
    event_id: str
    context: str
    action_ids: tuple[str, ...]
    action_features: tuple[str, ...]
    slots: tuple[SlotRequest, ...]
    defer_activation: bool


def parse_rank(body: Any, max_actions: int, *, multislot: bool) -> RankRequest:
    if not isinstance(body, dict):
        raise InvalidInput("body: must be a JSON object", field="body")
    event_id = body.get("eventId")
    if event_id is None:
        event_id = uuid.uuid4().hex
    else:
        event_id = parse_id(event_id, "eventId")
    defer = body.get("deferActivation", False)
    if defer is None:
        defer = False
    if not isinstance(defer, bool):
        raise InvalidInput("deferActivation: must be true or false", field="deferActivation")
    context = namespaces(body.get("contextFeatures"), "contextFeatures")
    actions = body.get("actions")
    if not isinstance(actions, list) or not actions:
        raise InvalidInput("actions: must be a non-empty list", field="actions")
    if len(actions) > max_actions:
        raise InvalidInput(
            f"actions: {len(actions)} actions, at most {max_actions} are allowed", field="actions"
        )
    ids: list[str] = []
    features = []
    for i, action in enumerate(actions):
        if not isinstance(action, dict):
            raise InvalidInput(f"actions[{i}]: must be an object", field=f"actions[{i}]")
        ids.append(parse_id(action.get("id"), f"actions[{i}].id"))
        features.append(namespaces(action.get("features"), f"actions[{i}].features"))
    index = {action_id: i for i, action_id in enumerate(ids)}
    if len(index) != len(ids):
        duplicate = next(a for a in ids if ids.count(a) > 1)
        raise InvalidInput(f"actions: id {duplicate!r} appears twice", field="actions")
    if multislot:
        slots = _slots(body.get("slots"), index)
        excluded_everywhere: set[int] = set()
    else:
        if body.get("slots") is not None:
            raise InvalidInput("slots: only multislot/rank takes slots", field="slots")
        excluded_everywhere = set(_excluded(body.get("excludedActions"), index, "excludedActions"))
        allowed = [i for i in range(len(ids)) if i not in excluded_everywhere]
        if not allowed:
            raise InvalidInput("excludedActions: every action is excluded", field="excludedActions")
        slots = (SlotRequest(None, "", tuple(sorted(excluded_everywhere)), allowed[0]),)
    _check_room(slots, len(ids))
    return RankRequest(event_id, context, tuple(ids), tuple(features), slots, defer)


def _slots(raw: Any, index: dict[str, int]) -> tuple[SlotRequest, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("slots: must be a non-empty list", field="slots")
    if len(raw) > MAX_SLOTS:
        raise InvalidInput(f"slots: at most {MAX_SLOTS} slots", field="slots")
    slots, seen = [], set()
    for j, slot in enumerate(raw):
        at = f"slots[{j}]"
        if not isinstance(slot, dict):
            raise InvalidInput(f"{at}: must be an object", field=at)
        slot_id = parse_id(slot.get("id"), f"{at}.id")
        if slot_id in seen:
            raise InvalidInput(f"{at}.id: {slot_id!r} appears twice", field=f"{at}.id")
        seen.add(slot_id)
        baseline = slot.get("baselineAction")
        if not isinstance(baseline, str) or baseline not in index:
            raise InvalidInput(
                f"{at}.baselineAction: must be the id of one of the actions",
                field=f"{at}.baselineAction",
            )
        text = " ".join(
            t
            for t in (
                namespaces(slot.get("features"), f"{at}.features"),
                namespaces(slot.get("positionFeatures"), f"{at}.positionFeatures"),
            )
            if t
        )
        excluded = _excluded(slot.get("excludedActions"), index, f"{at}.excludedActions")
        slots.append(SlotRequest(slot_id, text, excluded, index[baseline]))
    return tuple(slots)


def _check_room(slots: tuple[SlotRequest, ...], actions: int) -> None:
    """Every slot must have an action left once the slots before it took theirs."""
    for j, slot in enumerate(slots):
        if actions - len(set(slot.excluded)) - j < 1:
            field = "excludedActions" if slot.id is None else f"slots[{j}]"
            raise InvalidInput(f"{field}: no action is left for this slot", field=field)


def _excluded(raw: Any, index: dict[str, int], field: str) -> tuple[int, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidInput(f"{field}: must be a list of action ids", field=field)
    out = []
    for i, action_id in enumerate(raw):
        if not isinstance(action_id, str) or action_id not in index:
            raise InvalidInput(f"{field}[{i}]: must be the id of one of the actions", field=field)
        out.append(index[action_id])
    return tuple(sorted(set(out)))


def parse_value(raw: Any, field: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not finite(raw):
        raise InvalidInput(f"{field}: must be a finite number", field=field)
    if not -1.0 <= raw <= 1.0:
        raise InvalidInput(f"{field}: must be between -1 and 1", field=field)
    return float(raw)


def parse_reward(body: Any) -> float:
    if not isinstance(body, dict) or "value" not in body:
        raise InvalidInput("value: is required", field="value")
    return parse_value(body["value"], "value")


def parse_multislot_reward(body: Any, slot_ids: list[str | None]) -> list[tuple[int, float]]:
    if not isinstance(body, dict) or not isinstance(body.get("reward"), list) or not body["reward"]:
        raise InvalidInput("reward: must be a non-empty list of {slotId, value}", field="reward")
    out = []
    for i, entry in enumerate(body["reward"]):
        at = f"reward[{i}]"
        if not isinstance(entry, dict):
            raise InvalidInput(f"{at}: must be an object", field=at)
        slot_id = entry.get("slotId")
        if slot_id not in slot_ids or slot_id is None:
            raise InvalidInput(f"{at}.slotId: not a slot of this event", field=f"{at}.slotId")
        out.append((slot_ids.index(slot_id), parse_value(entry.get("value"), f"{at}.value")))
    return out


def parse_id(value: Any, field: str) -> str:
    """An event, action or slot id: 1 to 256 characters, no NUL (PostgreSQL refuses it)."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID or "\x00" in value:
        raise InvalidInput(f"{field}: must be a string of 1 to {MAX_ID} characters", field=field)
    return value
