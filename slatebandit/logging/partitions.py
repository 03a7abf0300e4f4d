"""Daily partitions of the decision log on PostgreSQL; SQLite keeps one table of each.

On PostgreSQL ``decisions``, ``slots``, ``rewards`` and ``events`` are range-partitioned
(declarative partitioning), one partition per day, so that retention drops a day's tables
instead of deleting rows, and queries over recent decisions read only recent partitions.

The partition key is the id, not the time: a decision's id is its day and a sequence number,
``(days since 2024-01-01) << 40 | seq``, assigned by the database's clock as the row goes in
(``log_id``). So the ranges of ids the learner, replay and the release gate already read by
are ranges of days, and PostgreSQL prunes to the partitions they need with no new predicate.
Slots and rewards are partitioned by their decision's id, so a decision, its slots and its
rewards live in the same day's partitions and leave together. Ids still grow in the order
rows go in, which is what the learner's watermark (``model_versions.learned_through``)
needs, and stay below 2**53 until 2046, so they survive a trip through a float or JSON.

A decision goes in after it was made (a spooled one possibly days after), never before
(clocks allowed a day apart): so a decision made at time ``t`` has an id of at least
``id_floor(t)``, and a query for decisions made since ``t`` may add ``made_since``. Ids below
``LEGACY_END`` are plain sequence numbers: every id on SQLite, and the rows a PostgreSQL
database held before it was partitioned (kept as one partition, ``<table>_legacy``).

Event ids carry the second their decision was made (``new_event_id``), so looking one up
(a reward's decision) reads the partitions from that day on, not every day ever kept.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection, or_, text
from sqlalchemy.sql import ColumnElement

log = logging.getLogger(__name__)

DAY = 86_400
EPOCH_DAY = 19_723  # 2024-01-01, in days since 1970-01-01
SHIFT = 40  # bits of a day's sequence numbers
LEGACY_END = 1 << SHIFT
AHEAD_DAYS = 3  # partitions kept ready beyond today
CLOCK_SKEW_DAYS = 1  # how far a writer's clock may run ahead of the database's

# Each partitioned table and the column its ranges are over.
PARTITIONED = {"decisions": "id", "slots": "decision_id", "rewards": "decision_id", "events": "id"}
_DAILY = re.compile(rf"({'|'.join(PARTITIONED)})_p\d{{8}}")


def first_id(day: int) -> int:
    """The smallest id of a row that went in on ``day`` (days since 1970-01-01)."""
    return max(day - EPOCH_DAY, 0) << SHIFT


def day_of(seconds: float) -> int:
    return int(seconds // DAY)


def id_floor(seconds: float) -> int:
    """The smallest id a decision made at ``seconds`` can have (past the legacy ids)."""
    return max(first_id(day_of(seconds) - CLOCK_SKEW_DAYS), LEGACY_END)


def made_since(column: ColumnElement[int], seconds: float) -> ColumnElement[bool]:
    """A clause true of every decision (or slot, reward, event by its decision's id) made
    at or after ``seconds``, and of few others: on PostgreSQL it prunes older partitions."""
    return or_(column < LEGACY_END, column >= id_floor(seconds))


def sequence_numbers(ids: np.ndarray) -> np.ndarray:
    """The sequence part of decision ids: the id itself on SQLite. Replay hashes these, not
    the ids, so one log gives the same folds and bootstrap draws in either database."""
    return np.asarray(ids, dtype=np.int64) & (LEGACY_END - 1)


def new_event_id(now: float | None = None) -> str:
    """32 hex digits: the second it was made, then 96 random bits."""
    seconds = int(time.time() if now is None else now)
    return f"{seconds & 0xFFFFFFFF:08x}{secrets.token_hex(12)}"


def event_time(event_id: str) -> float | None:
    """When an event id from ``new_event_id`` was made; None for one too old or too new to
    be one (an id made before they carried their time: then nothing can be pruned)."""
    try:
        seconds = float(int(event_id[:8], 16))
    except ValueError:
        return None
    if seconds < EPOCH_DAY * DAY or seconds > time.time() + CLOCK_SKEW_DAYS * DAY:
        return None
    return seconds


# The id of a row going in now: the database's clock picks the day, so every writer agrees.
_LOG_ID = f"""
CREATE OR REPLACE FUNCTION slatebandit_log_id(seq regclass) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT ((floor(extract(epoch FROM now()) / {DAY})::bigint - {EPOCH_DAY}) << {SHIFT})
           + nextval(seq)
$$
"""

# The partitioned tables: the columns of ``logging.schema``'s tables of the same names (a test
# compares them), keys that include the partition column as PostgreSQL requires, and no
# foreign keys between them (a day's partitions are dropped together; rows are written by
# code that looked their parents up). ``decisions.event_id`` cannot be unique across
# partitions: the API makes it (96 random bits), and shipping checks before it writes.
# A slot's kind, source and score are NULL in new rows (the decision's payload keeps them):
# its row is then 52 bytes instead of 76, a tenth of a decision.
_TABLES = (
    """
    CREATE TABLE decisions (
        id BIGINT NOT NULL DEFAULT slatebandit_log_id('decisions_id_seq'),
        event_id VARCHAR(32) NOT NULL,
        created_at FLOAT NOT NULL,
        user_id VARCHAR(128) NOT NULL,
        policy VARCHAR(64) NOT NULL,
        model_version INTEGER NOT NULL,
        payload BYTEA NOT NULL,
        experiment VARCHAR(64),
        arm VARCHAR(64),
        placement VARCHAR(16) NOT NULL DEFAULT 'home',
        PRIMARY KEY (id)
    ) PARTITION BY RANGE (id)
    """,
    # Compress the payload in the row (it is about 1.7 KB, under the 2 KB at which PostgreSQL
    # would try by itself): it halves the bytes a decision takes.
    "ALTER TABLE decisions ALTER COLUMN payload SET STORAGE MAIN",
    "CREATE INDEX ix_decisions_event_id ON decisions USING hash (event_id)",
    "CREATE INDEX ix_decisions_experiment ON decisions (experiment, arm) "
    "WHERE experiment IS NOT NULL",
    "CREATE INDEX ix_decisions_model_version ON decisions (model_version, id)",
    # A window from a time on reads the day before too (clocks may differ): this finds its
    # last seconds there without reading the whole day.
    "CREATE INDEX ix_decisions_created_at ON decisions (created_at)",
    """
    CREATE TABLE slots (
        decision_id BIGINT NOT NULL,
        slot SMALLINT NOT NULL,
        item_key INTEGER NOT NULL,
        propensity FLOAT NOT NULL,
        kind VARCHAR(8),
        source VARCHAR(8),
        score FLOAT
    ) PARTITION BY RANGE (decision_id)
    """,
    # Not unique: a decision's slots share one index entry (B-tree deduplication), a quarter
    # of what a primary key on (decision_id, slot) takes.
    "CREATE INDEX ix_slots_decision ON slots (decision_id)",
    """
    CREATE TABLE rewards (
        id BIGINT NOT NULL DEFAULT nextval('rewards_id_seq'),
        decision_id BIGINT NOT NULL,
        item_key INTEGER NOT NULL,
        type VARCHAR(32) NOT NULL,
        reward FLOAT NOT NULL,
        value FLOAT,
        created_at FLOAT NOT NULL,
        CONSTRAINT uq_rewards_once UNIQUE (decision_id, item_key, type)
    ) PARTITION BY RANGE (decision_id)
    """,
    """
    CREATE TABLE events (
        id BIGINT NOT NULL DEFAULT slatebandit_log_id('events_id_seq'),
        user_id VARCHAR(128) NOT NULL,
        item_key INTEGER NOT NULL,
        type VARCHAR(32) NOT NULL,
        created_at FLOAT NOT NULL,
        ref VARCHAR(32),
        PRIMARY KEY (id)
    ) PARTITION BY RANGE (id)
    """,
    "CREATE INDEX ix_events_user ON events (user_id, id)",
    "CREATE INDEX ix_events_ref ON events USING hash (ref)",
)
_SEQUENCES = ("decisions_id_seq", "rewards_id_seq", "events_id_seq")


def is_partitioned(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def create_tables(conn: Connection) -> None:
    """Create the partitioned log tables in a new PostgreSQL database, with today's
    partitions and those of the next days."""
    for sequence in _SEQUENCES:
        conn.execute(text(f"CREATE SEQUENCE IF NOT EXISTS {sequence} AS BIGINT"))
    conn.execute(text(_LOG_ID))
    for statement in _TABLES:
        conn.execute(text(statement))
    for table in PARTITIONED:
        conn.execute(text(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT"))
    ensure_partitions(conn, time.time())


def partition_existing(conn: Connection) -> None:
    """Schema 7 to 8 on PostgreSQL: make the log tables partitioned, keeping their rows.

    Each old table becomes the partition ``<table>_legacy`` of ids below ``LEGACY_END``
    (a plain sequence never got near it), renamed, not copied: the step takes seconds at
    any size. New rows get day-coded ids above every old one. Retention deletes legacy rows
    one by one, as before, until none is left.
    """
    for table in PARTITIONED:
        conn.execute(text(f"ALTER TABLE {table} RENAME TO {table}_legacy"))
        for index in _legacy_indexes(conn, table):
            conn.execute(text(f"ALTER INDEX {index} RENAME TO {index}_legacy"))
    # The old foreign keys tie the legacy tables to each other and to ``items``; they stay.
    for sequence in _SEQUENCES:  # the old columns' own sequences go on counting, unowned
        conn.execute(text(f"CREATE SEQUENCE IF NOT EXISTS {sequence} AS BIGINT"))
        conn.execute(text(f"ALTER SEQUENCE {sequence} OWNED BY NONE"))
    conn.execute(text(_LOG_ID))
    for statement in _TABLES:
        conn.execute(text(statement))
    for table, column in PARTITIONED.items():
        conn.execute(text(f"ALTER TABLE {table}_legacy ALTER COLUMN {column} DROP DEFAULT"))
        conn.execute(
            text(
                f"ALTER TABLE {table} ATTACH PARTITION {table}_legacy "
                f"FOR VALUES FROM (MINVALUE) TO ({LEGACY_END})"
            )
        )
        conn.execute(text(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT"))
    ensure_partitions(conn, time.time())


def _legacy_indexes(conn: Connection, table: str) -> list[str]:
    """The indexes of ``<table>_legacy`` whose names the partitioned table will want."""
    names = conn.execute(
        text(
            "SELECT indexname FROM pg_indexes "
            "WHERE tablename = :t AND schemaname = current_schema()"
        ),
        {"t": f"{table}_legacy"},
    ).scalars()
    return [name for name in names if not name.endswith("_legacy")]


@dataclass(frozen=True)
class Partition:
    table: str
    day: int  # days since 1970-01-01

    @property
    def name(self) -> str:
        date = dt.datetime.fromtimestamp(self.day * DAY, dt.UTC)
        return f"{self.table}_p{date:%Y%m%d}"


def ensure_partitions(conn: Connection, now: float, ahead: int = AHEAD_DAYS) -> list[str]:
    """Create the partitions of yesterday through ``ahead`` days from ``now`` that are
    missing; returns their names. Safe to run from every worker at once."""
    return ensure_days(conn, range(day_of(now) - 1, day_of(now) + ahead + 1))


def ensure_days(conn: Connection, days: Iterable[int]) -> list[str]:
    """Create the missing partitions of ``days`` (days since 1970-01-01)."""
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('slatebandit partitions'))"))
    present = set(partition_names(conn))
    made = []
    for day in days:
        for table in PARTITIONED:
            partition = Partition(table, day)
            if partition.name in present:
                continue
            if _default_holds(conn, table, day):
                # Rows that went in while no partition was ready: leave the day to the default
                # partition (retention deletes its rows one by one) rather than fail.
                log.warning("partition %s: rows of its day are in the default", partition.name)
                continue
            conn.execute(
                text(
                    f"CREATE TABLE {partition.name} PARTITION OF {table} "
                    f"FOR VALUES FROM ({first_id(day)}) TO ({first_id(day + 1)})"
                )
            )
            made.append(partition.name)
    return made


def _default_holds(conn: Connection, table: str, day: int) -> bool:
    column = PARTITIONED[table]
    found = conn.execute(
        text(f"SELECT 1 FROM {table}_default WHERE {column} >= :lo AND {column} < :hi LIMIT 1"),
        {"lo": first_id(day), "hi": first_id(day + 1)},
    ).first()
    return found is not None


def partition_names(conn: Connection) -> list[str]:
    """The daily partitions that exist, oldest first (not the legacy or default ones)."""
    parents = ", ".join(f"'{table}'::regclass" for table in PARTITIONED)  # as search_path finds
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            f"WHERE i.inhparent IN ({parents})"
        )
    ).scalars()
    return sorted(name for name in rows if _DAILY.fullmatch(name))


def days_held(conn: Connection) -> list[int]:
    """The days that have daily partitions, oldest first."""
    days = set()
    for name in partition_names(conn):
        date = dt.datetime.strptime(name[-8:], "%Y%m%d").replace(tzinfo=dt.UTC)
        days.add(day_of(date.timestamp()))
    return sorted(days)


def drop_before(conn: Connection, cutoff: float) -> list[str]:
    """Drop every daily partition whose rows all went in before ``cutoff``: a decision goes
    in after it is made, so they were all made before it too. Returns what was dropped."""
    dropped = []
    for day in days_held(conn):
        if (day + 1) * DAY > cutoff:
            break
        for table in ("rewards", "slots", "decisions", "events"):
            name = Partition(table, day).name
            conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
            dropped.append(name)
    return dropped
