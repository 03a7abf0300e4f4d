"""The machine registry: which machines serve from this database, and whose spool may still
hold records the database has not got.

While the database is away each machine spools what it acknowledges (``logging.spool``), and
ships it when the database returns, each machine in its own time. Meanwhile a reward may name
a decision the database does not know yet. Refusing it loses a click that happened; accepting
every unknown event id would hide a click tracker's mistakes. So every serving worker reports
its machine here every ``HEARTBEAT_SECONDS`` (``report``): when its oldest unshipped segment
was started (``spooling_since``, NULL when its spool is empty), and, after losing the database
and finding it again, when it did (``recovered_at``). A reward for an unknown decision is
parked in ``spool_orphans`` while some other machine may hold records (``holding``):

- it reported unshipped records;
- or it has not been heard from for ``SILENT_AFTER`` seconds (dead, or cut off from the
  database: either way it may have spooled), unless it said it stopped with an empty spool;
- or it has not reported since some machine found the database again (an outage all machines
  shared ended: until each reports, any of them may hold what it spooled).

Otherwise the 404 stands. A parked reward moves into ``rewards`` in the transaction that ships
its decision (``recommender.shipping``); ``lock_orphans`` keeps that join and a parking from
missing each other. It is dropped (``expire_orphans``) once every machine has reported an
empty spool since it was parked, ``GRACE_SECONDS`` later (for clocks that differ), or after
the shipper's age limit whatever the registry says.

The id of a machine is kept in its spool directory (``.machine-id``): the registry says which
spools exist, and the id goes wherever the spool goes. SQLite is one machine's database: it
keeps no registry (``shared``).

A machine that died and will not come back (its disk, and so its spool, gone) is silent: it
may hold records until ``expire_orphans`` forgets it after the shipper's age limit (7 days),
and meanwhile every reward for an unknown decision is parked instead of refused. An operator
who knows better says so with ``slatebandit machines forget ID`` (``forget``).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import Connection, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from slatebandit.errors import InvalidInput
from slatebandit.logging.decisions import ShownDecision, shown_decision
from slatebandit.logging.schema import machines, spool_orphans
from slatebandit.logging.spool import SpooledReward

HEARTBEAT_SECONDS = 1.0  # how often each serving worker reports its machine
SILENT_AFTER = 5.0  # a machine not heard from this long may be spooling
GRACE_SECONDS = 300.0  # a parked reward outlives the last spool that could hold its decision
ID_FILE = ".machine-id"
# pg_advisory_xact_lock's key for parking and joining rewards ("sborphan" as an integer).
ORPHANS_LOCK = int.from_bytes(b"sborphan", "big")


@dataclass(frozen=True)
class Machine:
    """A machine as it registers: its id, name, spool directory and when it started."""

    machine_id: str
    hostname: str
    spool_dir: str
    started_at: float

    @classmethod
    def of(cls, directory: Path, started_at: float) -> Machine:
        return cls(machine_id(directory), socket.gethostname()[:255], str(directory), started_at)


def shared(dialect: str) -> bool:
    """Whether a database of ``dialect`` may be shared by machines (SQLite's file is one
    machine's: its workers share one spool directory, and need no registry)."""
    return dialect != "sqlite"


def machine_id(directory: Path) -> str:
    """The id kept in ``directory``, made on first use. Written aside and linked into place,
    so workers starting together agree on one and none reads a half-written file."""
    path = directory / ID_FILE
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        draft = directory / f"{ID_FILE}.{os.getpid()}"
        draft.write_text(uuid.uuid4().hex)
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another worker's id won
        finally:
            draft.unlink()
    return path.read_text().strip()


def report(
    conn: Connection,
    machine: Machine,
    now: float,
    *,
    spooling_since: float | None,
    spool_bytes: int,
    recovered: bool = False,
) -> None:
    """Record that ``machine`` is up at ``now``, and what its spool holds."""
    values = {
        "hostname": machine.hostname,
        "spool_dir": machine.spool_dir,
        "seen_at": now,
        "spooling_since": spooling_since,
        "spool_bytes": spool_bytes,
        "stopped_at": None,
    }
    if recovered:
        values["recovered_at"] = now
    where = machines.c.machine_id == machine.machine_id
    row = conn.execute(select(machines.c.started_at, machines.c.seen_at).where(where)).first()
    if row is None:
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(machines).values(
                        machine_id=machine.machine_id, started_at=machine.started_at, **values
                    )
                )
            return
        except IntegrityError:  # another worker of the machine registered it just now
            row = conn.execute(select(machines.c.started_at, machines.c.seen_at).where(where)).one()
    # A worker that started after the machine was last heard from began a new run of it.
    restarted = machine.started_at > row.seen_at
    started = machine.started_at if restarted else min(row.started_at, machine.started_at)
    conn.execute(update(machines).where(where).values(started_at=started, **values))


def stopped(conn: Connection, machine: Machine, now: float) -> None:
    """Record that ``machine`` stopped with an empty spool: it holds nothing to wait for."""
    conn.execute(
        update(machines)
        .where(machines.c.machine_id == machine.machine_id)
        .values(seen_at=now, stopped_at=now, spooling_since=None, spool_bytes=0)
    )


def holding(conn: Connection, now: float, *, besides: str | None = None) -> list[str]:
    """The ids of the machines (other than ``besides``) whose spools may hold records the
    database has not got (the rules are in this module's docstring)."""
    rows = conn.execute(select(machines)).all()
    recovered = max((row.recovered_at or 0.0 for row in rows), default=0.0)
    found = []
    for row in rows:
        if row.machine_id == besides:
            continue
        if row.spooling_since is not None:
            found.append(row.machine_id)
        elif row.stopped_at is None and row.seen_at < max(now - SILENT_AFTER, recovered):
            found.append(row.machine_id)
    return found


@dataclass(frozen=True)
class Registered:
    """A machine as the registry holds it, for operators (``slatebandit machines list``)."""

    machine_id: str
    hostname: str
    spool_dir: str
    started_at: float
    seen_at: float
    spooling_since: float | None
    spool_bytes: int
    stopped_at: float | None
    may_hold: bool  # whether its spool may hold records the database has not got (``holding``)


def registered(conn: Connection, now: float) -> list[Registered]:
    """Every machine in the registry, the most recently heard from first."""
    rows = conn.execute(select(machines).order_by(machines.c.seen_at.desc())).all()
    may_hold = set(holding(conn, now))
    return [
        Registered(
            row.machine_id,
            row.hostname,
            row.spool_dir,
            row.started_at,
            row.seen_at,
            row.spooling_since,
            row.spool_bytes,
            row.stopped_at,
            row.machine_id in may_hold,
        )
        for row in rows
    ]


def forget(conn: Connection, machine_id: str, now: float) -> None:
    """Remove a machine that will not come back, spool and all: parked rewards stop waiting
    for it (``expire_orphans`` drops them once ``GRACE_SECONDS`` old, as after a spool that
    emptied). A machine heard from in the last
    ``SILENT_AFTER`` seconds is running, and would only register again: refused."""
    row = conn.execute(select(machines).where(machines.c.machine_id == machine_id)).first()
    if row is None:
        raise InvalidInput(f"no machine {machine_id!r} in the registry", field="machine_id")
    if row.stopped_at is None and row.seen_at >= now - SILENT_AFTER:
        raise InvalidInput(
            f"machine {machine_id!r} ({row.hostname}) reported {now - row.seen_at:.1f} s ago: "
            "it is running; stop it first",
            field="machine_id",
        )
    conn.execute(delete(machines).where(machines.c.machine_id == machine_id))


def lock_orphans(conn: Connection) -> None:
    """Serialise parking a reward with joining parked rewards to shipped decisions, until the
    transaction ends. Without it, on PostgreSQL, a reward parked as its decision ships could
    miss both ways: the parker not yet seeing the decision, the shipper not yet seeing the
    reward. SQLite needs nothing: its writers already take turns."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ORPHANS_LOCK})


def decision_or_park(conn: Connection, reward: SpooledReward, now: float) -> ShownDecision | None:
    """The decision ``reward`` names, or None once the reward is parked in ``spool_orphans``
    (it moves into ``rewards`` when that decision ships)."""
    found = shown_decision(conn, reward.event_id)
    if found is not None:
        return found
    lock_orphans(conn)
    found = shown_decision(conn, reward.event_id)  # shipped while this waited for the lock
    if found is None:
        conn.execute(insert(spool_orphans).values(**asdict(reward), parked_at=now))
    return found


def expire_orphans(conn: Connection, now: float, max_age: float) -> int:
    """Drop the parked rewards no machine can still ship a decision for, and any older than
    ``max_age`` seconds; forget machines not heard from in ``max_age``. Returns how many
    rewards were dropped.

    A reward parked at P names a decision made before P. A machine that has reported an empty
    spool since P (or stopped with one) cannot hold it, and neither can one whose oldest
    unshipped segment is newer than P; ``GRACE_SECONDS`` absorbs clocks that differ."""
    horizon = now - GRACE_SECONDS
    for row in conn.execute(select(machines)).all():
        if row.spooling_since is not None:
            horizon = min(horizon, row.spooling_since - GRACE_SECONDS)
        elif row.stopped_at is None:
            horizon = min(horizon, row.seen_at - GRACE_SECONDS)
    horizon = max(horizon, now - max_age)
    conn.execute(delete(machines).where(machines.c.seen_at < now - max_age))
    expired = conn.execute(delete(spool_orphans).where(spool_orphans.c.parked_at < horizon))
    return max(expired.rowcount, 0)
