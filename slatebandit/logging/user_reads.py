"""A shopper's state read on the event loop itself: every slate makes one.

Through SQLAlchemy the read is a blocking call, so it hops to a worker thread and back; on a
busy worker that hop, and each round trip, is one more wait for a time slice. Here it is
psycopg's async connection, from a small pool of this worker's own (``psycopg_pool``), outside
any transaction (one statement sees one snapshot anyway), the statement prepared by the server
after its first uses. The pool hands connections out unchecked, without the ping that
SQLAlchemy's pool sends first: a read that finds its connection dead (the database restarted)
is tried once more.

At 10M shoppers (``benchmarks/user_state_scale.py``; figures in ``benchmarks/README.md``) this
read's p99 is about half the thread-hop read's.

On SQLite (``SqliteUserReader``) the read runs on the loop too (in WAL mode a reader never
waits for the writer), through a sqlite3 connection of the worker's own and the statement
compiled once: 8 µs a read, against about 100 µs through SQLAlchemy's connection checkout and
result rows (measured on 5,000 shoppers).
"""

from __future__ import annotations

import sqlite3

import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine

from slatebandit.errors import DatabaseUnavailable
from slatebandit.logging.engine import (
    CONNECT_TIMEOUT,
    POSTGRES_CONNECT_ARGS,
    SQLITE_BUSY_SECONDS,
    sqlite_away,
    sqlite_file,
)
from slatebandit.logging.users import READ_USER, UserRead, user_read

# Reads in flight at once per worker; more wait for a connection (a read takes a fraction of
# a millisecond, so a few connections serve a worker's slates).
POOL_SIZE = 4


class UserReader:
    """``read_user`` for one worker's event loop. Open on first use; ``close`` at shutdown."""

    def __init__(
        self, engine: Engine, *, size: int = POOL_SIZE, timeout: float = CONNECT_TIMEOUT
    ) -> None:
        self._sql = str(READ_USER.compile(dialect=engine.dialect))
        conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=size,
            kwargs={"autocommit": True, **POSTGRES_CONNECT_ARGS},
            open=False,
            timeout=timeout,  # to wait for a connection; then it is PoolTimeout, unreachable
            name="user-reads",
        )
        self._opened = False

    async def read(self, user_id: str) -> UserRead:
        """The user's state and batch features (as ``read_user``). Raises DatabaseUnavailable
        if the database cannot be reached; a slow one is the caller's timeout to bound."""
        if not self._opened:  # opening needs the running loop, so not in __init__
            self._opened = True
            await self._pool.open(wait=False)
        try:
            return await self._once(user_id)
        except psycopg.OperationalError as exc:
            if not _unreachable(exc):
                raise
        try:  # a connection that had died in the pool is gone now: once more, on another
            return await self._once(user_id)
        except psycopg.OperationalError as exc:
            if not _unreachable(exc):
                raise
            raise DatabaseUnavailable(
                f"database: unreachable ({type(exc).__name__})", field="database"
            ) from exc

    async def _once(self, user_id: str) -> UserRead:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(self._sql, {"user_id": user_id})).fetchone()
        assert row is not None  # READ_USER always answers one row
        return user_read(row)

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()


class SqliteUserReader:
    """``read_user`` on a SQLite file, for one worker's event loop: the same interface as
    ``UserReader``. The connection opens on first use; ``close`` at shutdown."""

    def __init__(self, engine: Engine) -> None:
        compiled = READ_USER.compile(dialect=engine.dialect)
        self._sql = str(compiled)
        self._binds = len(compiled.positiontup or ())  # the user id, once per subquery
        self._path = sqlite_file(engine) or ""
        self._conn: sqlite3.Connection | None = None

    @staticmethod
    def serves(engine: Engine) -> bool:
        """Whether ``engine`` is a SQLite file (a memory database is one per connection)."""
        return sqlite_file(engine) is not None

    async def read(self, user_id: str) -> UserRead:
        """The user's state and batch features (as ``read_user``). Raises DatabaseUnavailable
        if the database cannot be opened or read."""
        try:
            if self._conn is None:
                self._conn = _read_only(self._path)
            # fetchall, not fetchone: the statement runs to its end, so the connection holds
            # no snapshot between slates (one left open would stall the WAL's checkpoints).
            (row,) = self._conn.execute(self._sql, (user_id,) * self._binds).fetchall()
        except sqlite3.Error as exc:
            if not sqlite_away(exc):
                raise
            await self.close()  # a new connection next time: the file may come back
            raise DatabaseUnavailable(
                f"database: unreachable ({type(exc).__name__})", field="database"
            ) from exc
        return user_read(row)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _read_only(path: str) -> sqlite3.Connection:
    # The engine's busy timeout too: in WAL mode a reader rarely meets SQLite's busy handler.
    conn = sqlite3.connect(
        path, timeout=SQLITE_BUSY_SECONDS, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA query_only=ON")
    return conn


def _unreachable(exc: psycopg.OperationalError) -> bool:
    # As ``engine.is_unavailable``: no SQLSTATE (the connection failed or was cut), class 08,
    # or a server shutting down; not a statement the server refused.
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")
