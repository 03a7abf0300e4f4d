"""What a reward and an event do, written once: live (``reward``, ``event``) and when the spool
ships (``recommender.shipping``).

Each writes its row and folds the shopper's action into their stored state in one transaction
(``store_reward``, ``store_event``), and says what the serving process keeps in memory must
learn of it as ``Effects``; the recommender applies those once the transaction has committed.
Live, a write the database cannot take goes to the spool instead, and ships later through the
same two functions. A reward whose decision may still be in another machine's spool is parked
in the database until that decision ships (``logging.machines``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection

from slatebandit.errors import DatabaseUnavailable, InvalidInput, NotFound
from slatebandit.logging import ShownDecision, decision_user, insert_event, insert_reward
from slatebandit.logging.machines import decision_or_park
from slatebandit.logging.partitions import new_event_id
from slatebandit.logging.privacy import REDACTED
from slatebandit.logging.spool import SpooledEvent, SpooledReward
from slatebandit.recommender.outage import SPOOLED
from slatebandit.recommender.state import Effects, Parts
from slatebandit.retrieval import EVENT_WEIGHTS


def store_reward(
    conn: Connection, r: Parts, decision: ShownDecision, reward: SpooledReward, effects: Effects
) -> bool:
    """Store ``reward`` for ``decision`` once; a positive one is also something the shopper did,
    and shapes their next slate like an event (a negative one, a dislike, is not folded into
    what they like). Returns False if it was stored already."""
    stored = insert_reward(
        conn,
        decision_id=decision.decision_id,
        item_key=reward.item_key,
        type=reward.type,
        reward=reward.reward,
        created_at=reward.created_at,
        value=reward.value,
    )
    effects.records += 1
    if stored and reward.reward > 0:
        kind = reward.type if reward.type in EVENT_WEIGHTS else "click"
        state = r.observation(decision.user_id, reward.item_key, kind, reward.created_at)(conn)
        effects.states.append((decision.user_id, state))
        effects.popularity.append((reward.item_key, reward.reward, time.time()))
        effects.context.append((dict(decision.context), reward.item_key, reward.reward))
    return stored


def store_event(conn: Connection, r: Parts, event: SpooledEvent, effects: Effects) -> bool:
    """Store ``event`` once (by its ``ref``) and fold it into the shopper's state; False if its
    commit had already reached the database (as the connection broke)."""
    if not insert_event(
        conn,
        user_id=event.user_id,
        item_key=event.item_key,
        type=event.type,
        created_at=event.created_at,
        ref=event.ref,
    ):
        return False
    state = r.observation(event.user_id, event.item_key, event.type, event.created_at)(conn)
    effects.states.append((event.user_id, state))
    effects.popularity.append((event.item_key, EVENT_WEIGHTS[event.type], time.time()))
    effects.records += 1
    return True


@dataclass(frozen=True)
class Logged:
    """Where feedback went: ``database``, ``spool``, or for a reward ``parked`` (in the
    database, waiting for its decision to ship from another machine's spool); for a reward,
    the reward it was stored with and whether it was a duplicate (None when spooled or parked:
    not known until it ships)."""

    logged: str
    reward: float | None = None
    duplicate: bool | None = None


async def reward(
    r: Parts,
    event_id: str,
    item_id: str,
    type: str,
    reward: float | None = None,
    value: float | None = None,
) -> Logged:
    """Reward ``item_id`` of the slate ``event_id``: committed, or spooled while the database
    is away (or while its decision may be in this machine's spool), or parked while it may be
    in another's; 4xx errors name the field.

    ``reward`` is what the learner is taught under the clicks objective (default: the reward
    table's for ``type``); ``value`` what the action was worth in money, if anything (the
    revenue objective's and the reports' figure)."""
    given = r.rewards.get(type) if reward is None else reward
    if given is None:
        raise InvalidInput(
            f"type: no reward given and {type!r} is not in SLATEBANDIT_REWARD_TABLE", field="type"
        )
    outage = r.outage
    try:
        decision = await r.shown_decision(event_id)
    except DatabaseUnavailable:
        outage.failed()
        decision = None
    parking = decision is None and not outage.spooling()
    if parking and not await _held_elsewhere(r):
        raise NotFound(f"event_id: no decision {event_id}", field="event_id")
    await r.know_items([item_id])  # shown by a worker that knew it sooner than this one
    key = r.store.catalog.key_of.get(item_id)
    if key is None:
        raise InvalidInput(f"item_id: {item_id!r} was not shown in this decision", field="item_id")
    if decision is not None:
        _check_shown(decision, event_id, key, item_id)
    record = SpooledReward(event_id, key, type, given, time.time(), value)
    if parking and not outage.degraded:
        return await _park(r, record, item_id)
    if decision is None or decision.decision_id == SPOOLED or outage.degraded:
        # Its decision may be in a spool, or the database is away: checked when shipped.
        await outage.append(record)
        return Logged("spool", given)
    shown = decision

    def unit(conn: Connection) -> tuple[bool, Effects]:
        if decision_user(conn, shown.decision_id) != shown.user_id:
            # The user was erased (on this worker or another) after the decision was cached.
            raise NotFound(f"event_id: decision {event_id} was erased", field="event_id")
        effects = Effects()
        return store_reward(conn, r, shown, record, effects), effects

    try:
        stored, effects = await outage.in_time(r.writer.submit(unit))
    except DatabaseUnavailable:
        outage.failed()
        await outage.append(record)
        return Logged("spool", given)
    r.apply(effects)
    return Logged("database", given, duplicate=not stored)


def _check_shown(decision: ShownDecision, event_id: str, key: int, item_id: str) -> None:
    """A 404 if ``decision`` was erased, a 400 if item ``key`` was not one it showed."""
    if decision.user_id == REDACTED:
        raise NotFound(f"event_id: decision {event_id} was erased", field="event_id")
    if key not in decision.item_keys:
        raise InvalidInput(f"item_id: {item_id!r} was not shown in this decision", field="item_id")


async def _held_elsewhere(r: Parts) -> bool:
    """Whether another machine's spool may hold a decision the database lacks; True when the
    database cannot say (this worker is then spooling, and spools the reward)."""
    if r.outage.machine is None:  # SQLite: this machine is the only one
        return False
    try:
        return bool(await r.outage.in_time(r.point_read(r.outage.held_elsewhere)))
    except DatabaseUnavailable:
        r.outage.failed()
        return True


async def _park(r: Parts, record: SpooledReward, item_id: str) -> Logged:
    """Park ``record`` until its decision ships; or store it, if the decision arrived
    meanwhile (checked as ever: a 4xx writes nothing)."""

    def unit(conn: Connection) -> tuple[bool | None, Effects]:
        effects = Effects()
        decision = decision_or_park(conn, record, time.time())
        if decision is None:
            return None, effects
        _check_shown(decision, record.event_id, record.item_key, item_id)
        return store_reward(conn, r, decision, record, effects), effects

    try:
        stored, effects = await r.outage.in_time(r.writer.submit(unit))
    except DatabaseUnavailable:
        r.outage.failed()
        await r.outage.append(record)
        return Logged("spool", record.reward)
    if stored is None:
        return Logged("parked", record.reward)
    r.apply(effects)
    return Logged("database", record.reward, duplicate=not stored)


async def event(r: Parts, user_id: str, item_id: str, type: str) -> Logged:
    """Record that a shopper acted on an item: committed, or spooled while the database is
    away (folded into their state when shipped: until then their slates do not show it)."""
    await r.know_items([item_id])
    key = r.store.catalog.key_of.get(item_id)
    if key is None:
        raise NotFound(f"item_id: no item {item_id!r}", field="item_id")
    now = time.time()
    record = SpooledEvent(r.user_key(user_id), key, type, now, new_event_id(now))
    if not r.outage.degraded:

        def unit(conn: Connection) -> Effects:
            effects = Effects()
            store_event(conn, r, record, effects)
            return effects

        try:
            r.apply(await r.outage.in_time(r.writer.submit(unit)))
            return Logged("database")
        except DatabaseUnavailable:
            r.outage.failed()
    await r.outage.append(record)
    return Logged("spool")
