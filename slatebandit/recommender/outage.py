"""Serving through a database outage.

A slate needs only memory (the index, the model, cached user states), so while the database
cannot be reached slates are still served. What would have been committed (decisions, rewards,
events) is appended to this worker's spool segment instead (``logging.spool``) and fsync'd
before the 2xx; each answer says where its record went (``logged``: database, spool or none).

A watcher probes the database every ``SLATEBANDIT_DB_PROBE_SECONDS``. Once it answers, this
worker closes its segment and ships the spool (``recommender.shipping``: every decision first,
then the rewards and events, each exactly once).

Past one machine, each reports to the machine registry (``logging.machines``) what its spool
holds, so that a reward posted to another machine for a decision still in this one's spool is
parked in the database rather than refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, text

from slatebandit.errors import DatabaseUnavailable
from slatebandit.logging import DecisionRecord, ShownDecision, machines
from slatebandit.logging.engine import is_unavailable
from slatebandit.logging.spool import (
    SpooledEvent,
    SpooledReward,
    SpoolWriter,
    segments,
    spool_bytes,
    spooling_since,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
# The ShownDecision.decision_id of a decision this worker spooled: never written anywhere; a
# reward for it is spooled too, or, once the database is back, looked up there by event id.
SPOOLED = -1


class Outage:
    """Whether this worker can reach the database, and the spool it writes to when it cannot."""

    def __init__(
        self, engine: Engine, directory: Path, *, max_bytes: int, timeout: float = 5.0
    ) -> None:
        self.engine = engine
        self.timeout = timeout  # seconds a serving write or read may wait for the database
        self.spool = SpoolWriter(directory, max_bytes=max_bytes)
        self.degraded = False  # the latest attempt to reach the database failed
        self.shipped = 0  # records this worker shipped, for /healthz
        self.dropped = 0  # records not stored: unreadable, of an erased shopper, or rewards
        # whose decision never shipped or does not show their item
        # This machine in the registry; none on SQLite, which is one machine's database.
        shared = machines.shared(engine.dialect.name)
        self.machine = machines.Machine.of(directory, time.time()) if shared else None

    @property
    def directory(self) -> Path:
        return self.spool.directory

    def failed(self) -> None:
        """The database could not be reached: serve from memory and spool until it answers."""
        if not self.degraded:
            log.warning("database unreachable: serving from memory, spooling to %s", self.directory)
        self.degraded = True

    def spooling(self) -> bool:
        """Whether records may be in a spool rather than the database (this worker's or
        another's on this machine): a decision the database does not know may then exist."""
        return self.degraded or bool(segments(self.directory))

    def report(self, *, recovered: bool = False) -> None:
        """Tell the registry this machine is up and what its spool holds (blocking: call it
        on a thread); ``recovered``: it has just found the database again."""
        if self.machine is None:
            return
        with self.engine.begin() as conn:
            machines.report(
                conn,
                self.machine,
                time.time(),
                spooling_since=spooling_since(self.directory),
                spool_bytes=spool_bytes(self.directory),
                recovered=recovered,
            )

    def held_elsewhere(self, conn: Connection) -> list[str]:
        """The other machines whose spools may hold a decision the database lacks."""
        if self.machine is None:
            return []
        return machines.holding(conn, time.time(), besides=self.machine.machine_id)

    async def close(self) -> None:
        """Stop the spool; a machine that leaves nothing unshipped says it stopped, so no
        reward waits for it (one that cannot say so counts as spooling until it returns)."""
        await self.spool.stop()
        if self.machine is None or self.spooling():
            return
        machine = self.machine

        def stopped() -> None:
            with self.engine.begin() as conn:
                machines.stopped(conn, machine, time.time())

        try:
            await self.in_time(asyncio.to_thread(stopped))
        except Exception as exc:  # noqa: BLE001 - a stop must finish; the row then goes silent
            log.warning("machine registry: stop not recorded (%s)", type(exc).__name__)

    async def log_decision(
        self, submit: Callable[[Any], Any], record: DecisionRecord
    ) -> tuple[ShownDecision | None, str]:
        """Commit ``record`` through ``submit``, or spool it; None and "none" if neither works
        (the slate is still served)."""
        if not self.degraded:
            try:
                return await self.in_time(submit(record)), "database"
            except DatabaseUnavailable:
                self.failed()
        try:
            await self.spool.submit(record)
        except OSError:
            log.exception("decision %s was neither committed nor spooled", record.event_id)
            return None, "none"
        keys = tuple(slot.item_key for slot in record.shown)
        return ShownDecision(SPOOLED, keys, record.user_id), "spool"

    async def in_time(self, pending: Awaitable[T]) -> T:
        """``pending``, or DatabaseUnavailable if the database takes longer than the timeout (a
        server that stopped answering). A write that commits after all is harmless: its
        spooled copy is recognised by its id when shipped."""
        # asyncio.timeout, not wait_for: in Python 3.11 wait_for wraps ``pending`` in a task of
        # its own, and every slate waits twice (its user's state, its commit).
        try:
            async with asyncio.timeout(self.timeout):
                return await pending
        except TimeoutError:
            raise DatabaseUnavailable("database: no answer in time", field="database") from None

    async def append(self, record: SpooledReward | SpooledEvent) -> None:
        """Append ``record`` to the spool, durably; a 503 if even that fails."""
        try:
            await self.spool.submit(record)
        except OSError as exc:
            raise DatabaseUnavailable(
                f"database: unreachable, and the spool cannot take the record ({exc})",
                field="database",
            ) from exc

    async def probe(self) -> bool:
        """One probe of the database: whether it answers (and this worker may write again)."""
        try:
            await self.in_time(asyncio.to_thread(_probe, self.engine))
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            self.failed()
            return False
        if self.degraded:
            log.warning("database reachable again: shipping the spool")
            self.degraded = False
        return True

    def health(self) -> dict[str, object]:
        return {
            "database": "unreachable" if self.degraded else "ok",
            "spool": {
                "segments": len(segments(self.directory)),
                "bytes": spool_bytes(self.directory),
                "spooled": self.spool.appended,
                "shipped": self.shipped,
                "dropped": self.dropped,
            },
        }


def _probe(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
