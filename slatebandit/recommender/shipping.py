"""Shipping the spool into the database once it answers again (see ``recommender.outage``).

One worker of a machine at a time (a ``flock`` on the spool directory) ships every segment,
its own and those of workers that died, in three steps:

1. note each segment's size;
2. ship every segment's decisions, to its current end;
3. ship every segment's rewards and events, up to the size noted in 1.

A reward is spooled after its decision (its event id exists only once the slate was answered),
so by step 3 every decision a spooled reward on this machine can name is in the database. A
reward whose decision is still missing (in another machine's spool) waits in
``spool_orphans`` and moves into ``rewards`` in the transaction that ships its decision; so
does a reward posted live to another machine while the registry (``logging.machines``) says
this one's spool may hold its decision. The learner sees such a reward as on time: it arrives
with its decision. Each
shipping transaction stores how far it got (``spool_progress``), so nothing ships twice, and
records of a shopper erased after they were spooled are dropped (``erased_users``).

Each transaction is a unit of the group-commit writer. Rewards and events are stored by the
same functions as live ones (``recommender.feedback``); what they changed that the serving
process keeps in memory comes back as ``Effects``, applied once committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from sqlalchemy import Connection, delete, select

from slatebandit.logging import DecisionRecord, ShownDecision
from slatebandit.logging.decisions import decision_ids, shown_decision
from slatebandit.logging.machines import decision_or_park, expire_orphans, lock_orphans
from slatebandit.logging.privacy import REDACTED, erasures
from slatebandit.logging.schema import spool_orphans
from slatebandit.logging.spool import (
    DRAFT,
    SpooledEvent,
    SpooledReward,
    forget,
    is_held,
    progress,
    read,
    readable_end,
    segments,
    set_progress,
)
from slatebandit.recommender.feedback import store_event, store_reward
from slatebandit.recommender.state import Effects, Parts

log = logging.getLogger(__name__)
# Records per shipping transaction. Shipping shares the group-commit writer with live traffic:
# slate p99 over the 30 s after the database returned was 683 ms at 500, and 174 to 291 ms in
# three runs at 100 (benchmarks/outage.py, before it timed the shipping seconds apart).
SHIP_CHUNK = 100
ORPHAN_DAYS = 7.0  # a parked reward is dropped after this long at the latest (logging.machines)


async def watch(s: Parts) -> None:
    """One probe; when the database answers, close this worker's segment and ship."""
    outage = s.outage
    was_away = outage.degraded
    if not await outage.probe():
        return
    if was_away:  # before shipping: other machines now park rewards for what this one holds
        await asyncio.to_thread(partial(outage.report, recovered=True))
    if outage.spool.holds_segment:
        await outage.spool.close_segment()
    if segments(outage.directory):
        await ship(s)
        await asyncio.to_thread(outage.report)  # shipped: an unknown event id is a 404 again


async def heartbeat(s: Parts) -> None:
    """Report this machine and its spool to the registry, then drop the parked rewards whose
    decision no machine can still ship (``logging.machines``)."""
    await asyncio.to_thread(s.outage.report)
    s.apply(await s.writer.submit(_expire_orphans))


async def ship(s: Parts) -> None:
    """Ship every segment in the spool directory, unless another worker is shipping."""
    outage, directory = s.outage, s.outage.directory
    with _ship_lock(directory) as mine:
        if not mine:
            return
        started, shipped = time.monotonic(), 0

        def applied(effects: Effects) -> None:
            nonlocal shipped
            shipped += effects.records
            outage.shipped += effects.records
            outage.dropped += effects.dropped
            s.apply(effects)

        # 1. Each segment's size now; 2. every decision, from every segment (listed again: one
        # made since may hold the decision of a reward within those sizes); 3. the rewards and
        # events within those sizes.
        limits = {path: path.stat().st_size for path in segments(directory)}
        paths = segments(directory)
        for path in paths:
            while (effects := await s.writer.submit(_decisions_unit(s, path))) is not None:
                applied(effects)
        for path, limit in limits.items():
            unit = _others_unit(s, path, limit)
            while (effects := await s.writer.submit(unit)) is not None:
                applied(effects)
        applied(await s.writer.submit(_expire_orphans))
        for path in paths:
            if not is_held(path) and await s.read(partial(_finished, path=path)):
                path.unlink()
                await s.writer.submit(partial(forget, segment=path.name))
                log.info("spool segment %s shipped", path.name)
        if shipped:
            log.warning("shipped %d spooled records in %.1f s", shipped, time.monotonic() - started)
        for draft in directory.glob(f"*{DRAFT}"):  # left by a crash while created
            with contextlib.suppress(FileNotFoundError):  # or renamed meanwhile
                if time.time() - draft.stat().st_mtime > 60 and not is_held(draft):
                    draft.unlink()


@contextmanager
def _ship_lock(directory: Path) -> Iterator[bool]:
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".ship.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _decisions_unit(s: Parts, path: Path) -> Callable[[Connection], Effects | None]:
    """Ship up to SHIP_CHUNK decisions of ``path``, with any rewards parked for them; None
    when there were none left."""

    def unit(conn: Connection) -> Effects | None:
        start, others_at = progress(conn, path.name)
        end, found, effects = start, [], Effects()
        for end, record in read(path, start):  # noqa: B007 - ``end`` is where this chunk stops
            if record is None:
                _unreadable(path, effects)
            elif isinstance(record, DecisionRecord):
                found.append(record)
                if len(found) == SHIP_CHUNK:
                    break
        if end == start:
            return None
        erased = erasures(conn, [r.user_id for r in found])
        kept = [r for r in found if erased.get(r.user_id, -1.0) < r.created_at]
        effects.dropped += len(found) - len(kept)
        found = kept
        # A decision whose commit reached the database just as the connection broke was
        # spooled too: its event id says it is already there.
        there = decision_ids(conn, [r.event_id for r in found])
        fresh = [r for r in found if r.event_id not in there]
        shown = DecisionRecord.write_many(conn, fresh) if fresh else []
        effects.ids = {r.event_id: d.decision_id for r, d in zip(fresh, shown, strict=True)}
        effects.ids.update(there)
        effects.records += len(fresh)
        _adopt_orphans(conn, s, [r.event_id for r in fresh], effects)
        set_progress(conn, path.name, end, others_at)
        return effects

    return unit


def _others_unit(s: Parts, path: Path, limit: int) -> Callable[[Connection], Effects | None]:
    """Ship up to SHIP_CHUNK rewards and events of ``path`` that lie before ``limit``."""

    def unit(conn: Connection) -> Effects | None:
        decisions_at, start = progress(conn, path.name)
        end, effects, seen = start, Effects(), 0
        for end, record in read(path, start, limit):  # noqa: B007
            if isinstance(record, SpooledReward):
                _ship_reward(conn, s, record, effects)
            elif isinstance(record, SpooledEvent):
                _ship_event(conn, s, record, effects)
            else:
                continue  # decisions ship in step 2; an unreadable record was counted there
            seen += 1
            if seen == SHIP_CHUNK:
                break
        if end == start:
            return None
        set_progress(conn, path.name, decisions_at, end)
        return effects

    return unit


def _ship_reward(conn: Connection, s: Parts, r: SpooledReward, effects: Effects) -> None:
    # Its decision may still be in another machine's spool: then the reward is parked.
    decision = decision_or_park(conn, r, time.time())
    if decision is not None:
        _store_reward(conn, s, decision, r, effects)


def _store_reward(
    conn: Connection, s: Parts, decision: ShownDecision, r: SpooledReward, effects: Effects
) -> None:
    if decision.user_id == REDACTED or r.item_key not in decision.item_keys:
        log.warning("spooled reward for %s dropped: decision erased, or item not shown", r.event_id)
        effects.dropped += 1
        return
    store_reward(conn, s, decision, r, effects)


def _adopt_orphans(conn: Connection, s: Parts, event_ids: list[str], effects: Effects) -> None:
    """Store the parked rewards of decisions just shipped."""
    if not event_ids:
        return
    lock_orphans(conn)  # a reward parked from now on sees these decisions instead
    parked = conn.execute(
        select(spool_orphans).where(spool_orphans.c.event_id.in_(event_ids))
    ).all()
    for row in parked:
        decision = shown_decision(conn, row.event_id)
        assert decision is not None  # shipped in this transaction
        reward = SpooledReward(
            row.event_id, row.item_key, row.type, row.reward, row.created_at, row.value
        )
        _store_reward(conn, s, decision, reward, effects)
    if parked:
        conn.execute(delete(spool_orphans).where(spool_orphans.c.id.in_([r.id for r in parked])))


def _expire_orphans(conn: Connection) -> Effects:
    """Drop parked rewards whose decision no machine can still ship, and any parked for
    ORPHAN_DAYS (an unknown event id, or a slate logged nowhere: it never comes)."""
    dropped = expire_orphans(conn, time.time(), ORPHAN_DAYS * 86400)
    if dropped:
        log.warning("%d parked rewards dropped: no decision shipped for them", dropped)
    return Effects(dropped=dropped)


def _ship_event(conn: Connection, s: Parts, e: SpooledEvent, effects: Effects) -> None:
    if erasures(conn, [e.user_id]).get(e.user_id, -1.0) >= e.created_at:
        effects.dropped += 1  # the shopper was erased after this event
        return
    store_event(conn, s, e, effects)


def _unreadable(path: Path, effects: Effects) -> None:
    log.error("spool segment %s: a record this version cannot read was skipped", path.name)
    effects.dropped += 1


def _finished(conn: Connection, path: Path) -> bool:
    """Whether every whole record of ``path`` has been shipped."""
    decisions_at, others_at = progress(conn, path.name)
    end = readable_end(path, min(decisions_at, others_at))
    return decisions_at >= end and others_at >= end
