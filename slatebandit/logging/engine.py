"""Engine setup: SQLite in WAL mode by default, PostgreSQL by URL, the same schema on both."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from slatebandit.errors import ConfigError, DatabaseUnavailable
from slatebandit.logging import partitions
from slatebandit.logging.schema import SCHEMA_VERSION, metadata, schema_info

# A PostgreSQL connection attempt fails after CONNECT_TIMEOUT seconds, and one whose peer
# stops answering is closed within about USER_TIMEOUT (a write unacknowledged that long) or
# keepalive probes (when idle), so no thread waits on a vanished server for minutes.
CONNECT_TIMEOUT = 3
USER_TIMEOUT_MS = 15_000
# A host that drops packets must fail a connection in seconds, not minutes: that is what lets
# serving fall back to the spool (``recommender.outage``) during an outage.
POSTGRES_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": USER_TIMEOUT_MS,
}
T = TypeVar("T")
_SQLITE_AWAY = ("locked", "unable to open", "disk i/o", "readonly", "read-only")
SQLITE_BUSY_SECONDS = 30  # SQLite's busy handler waits this long for a lock before failing
# Each dialect's own insert, for statements that say ON CONFLICT (built once, by dialect name).
DIALECT_INSERT: dict[str, Callable[[Table], sqlite_dialect.Insert | postgresql_dialect.Insert]] = {
    "sqlite": sqlite_dialect.insert,
    "postgresql": postgresql_dialect.insert,
}

# Steps that bring a database of schema version V to V + 1 in place (new tables are created by
# ``create_all`` afterwards). Each is plain SQL both SQLite and PostgreSQL accept, or a function
# of the connection that knows which database it speaks to.
Step = str | Callable[[Connection], None]
MIGRATIONS: dict[int, tuple[Step, ...]] = {
    2: (
        "ALTER TABLE decisions ADD COLUMN experiment VARCHAR(64)",
        "ALTER TABLE decisions ADD COLUMN arm VARCHAR(64)",
        "CREATE INDEX ix_decisions_experiment ON decisions (experiment, arm)",
        "ALTER TABLE model_versions ADD COLUMN compared BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE model_versions ADD COLUMN agreed BIGINT NOT NULL DEFAULT 0",
    ),
    3: (),  # the Personalizer tables (pz_*) are new: create_all makes them
    4: (  # spool_progress is new
        "ALTER TABLE events ADD COLUMN ref VARCHAR(32)",
        "CREATE UNIQUE INDEX ux_events_ref ON events (ref)",
    ),
    5: (  # canaries is new
        "ALTER TABLE model_gates ADD COLUMN stage VARCHAR(16) NOT NULL DEFAULT 'guard'",
        "ALTER TABLE model_gates ADD COLUMN outcome VARCHAR(16) NOT NULL DEFAULT ''",
        "CREATE INDEX ix_decisions_model_version ON decisions (model_version, id)",
    ),
    6: (  # rule_versions is new
        "ALTER TABLE decisions ADD COLUMN placement VARCHAR(16) NOT NULL DEFAULT 'home'",
        "ALTER TABLE rewards ADD COLUMN value FLOAT",
        "ALTER TABLE spool_orphans ADD COLUMN value FLOAT",
    ),
    7: (  # machines is new; PostgreSQL's log tables become daily partitions
        lambda conn: partitions.partition_existing(conn) if _is_postgres(conn) else None,
    ),
}


def _is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _create_tables(conn: Connection) -> None:
    """Create the tables that are missing: on PostgreSQL the log tables are partitioned
    (``logging.partitions``), made by their own DDL."""
    if not _is_postgres(conn):
        metadata.create_all(conn)
        return
    plain = [t for t in metadata.sorted_tables if t.name not in partitions.PARTITIONED]
    metadata.create_all(conn, tables=plain)
    if not inspect(conn).has_table("decisions"):
        partitions.create_tables(conn)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached, rather than that a statement failed.

    PostgreSQL: a connection refused, cut or timed out (no SQLSTATE, class 08, or a server
    shutting down), not a deadlock or a bad statement. SQLite: a database that stays locked
    or cannot be opened or read.
    """
    if isinstance(exc, DatabaseUnavailable | PoolTimeout):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    state = getattr(exc.orig, "sqlstate", None)
    if isinstance(exc.orig, sqlite3.Error):
        return sqlite_away(exc.orig)
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def sqlite_away(exc: sqlite3.Error) -> bool:
    """Whether sqlite3's ``exc`` says the database stays locked or cannot be opened or read
    (``is_unavailable`` for errors raised by the driver itself)."""
    message = str(exc).lower()
    return any(words in message for words in _SQLITE_AWAY)


def sqlite_file(engine: Engine) -> str | None:
    """The path of ``engine``'s SQLite file; None for another database or a memory one."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return database


def open_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for ``url`` with the schema in place.

    SQLite runs in WAL mode with ``synchronous=FULL``: a committed transaction survives a
    kill -9 and a power cut, and readers never block the one writer.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_SECONDS}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = _postgres(url, pool_pre_ping=True, pool_size=8, max_overflow=8)
    if create:
        _check_schema(engine)
    return engine


def point_reader(engine: Engine) -> Engine:
    """An engine for reads of a row or two by key, run outside a transaction (one statement
    sees one snapshot anyway): on PostgreSQL, BEGIN and ROLLBACK were two of a shopper's state
    read's four round trips. Its pool skips the pre-ping, the third: a caller retries once
    when a connection turns out dead (``read_retrying``). Dispose of it with ``engine``."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return _postgres(engine.url, isolation_level="AUTOCOMMIT", pool_size=4, max_overflow=8)


def read_retrying(engine: Engine, query: Callable[[Connection], T]) -> T:
    """``query`` on a connection from ``engine``'s pool, tried again once if that connection
    had died while it waited in the pool (a database restart, an idle timeout). SQLAlchemy
    then drops it and every connection older than it, so the second try reconnects; if the
    database is away, that one fails too and its error is raised."""
    try:
        with engine.connect() as conn:
            return query(conn)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    with engine.connect() as conn:
        return query(conn)


def _postgres(url: str | URL, **options: Any) -> Engine:
    return create_engine(url, connect_args=POSTGRES_CONNECT_ARGS, **options)


def _check_schema(engine: Engine) -> None:
    """Create the tables in an empty database; refuse one made by another schema version."""
    with engine.begin() as conn:
        if _is_postgres(conn):
            # Servers started together on a new database raced to create its tables (one
            # failed on a duplicate type): they take turns.
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('slatebandit schema'))"))
        existing = set(inspect(conn).get_table_names())
        if not existing & set(metadata.tables):
            _create_tables(conn)
            conn.execute(insert(schema_info).values(name="version", value=SCHEMA_VERSION))
            return
        found = None
        if "schema_info" in existing:
            found = conn.execute(
                select(schema_info.c.value).where(schema_info.c.name == "version")
            ).scalar()
        while found in MIGRATIONS and found < SCHEMA_VERSION:
            tables = set(inspect(conn).get_table_names())
            for statement in MIGRATIONS[found]:
                if callable(statement):
                    statement(conn)
                    continue
                altered = statement.split()[2] if statement.startswith("ALTER TABLE") else None
                if altered is None or altered in tables:  # a table still to come is made whole
                    conn.execute(text(statement))
            found += 1
            conn.execute(
                update(schema_info).where(schema_info.c.name == "version").values(value=found)
            )
        if found != SCHEMA_VERSION:
            raise ConfigError(
                f"database {engine.url.render_as_string()} has schema version "
                f"{found or 'unknown'}, this slatebandit needs {SCHEMA_VERSION}: use a new "
                "database or data directory",
                field="db_url",
            )
        _create_tables(conn)  # tables added within this version


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
