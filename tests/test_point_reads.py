"""Point reads on PostgreSQL: the slate's read of its shopper on the event loop (``UserReader``)
and SQLAlchemy's point reads without a pre-ping (``read_retrying``), each surviving a
connection the server closed while it idled, and each the same rows as ``read_user``. On
SQLite, the shopper's read on the loop (``SqliteUserReader``): the same rows, the newest
commit, and an unreadable file said to be unavailable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

from slatebandit.errors import DatabaseUnavailable
from slatebandit.logging.engine import open_engine, point_reader, read_retrying
from slatebandit.logging.user_reads import SqliteUserReader, UserReader
from slatebandit.logging.users import read_user, save_user_profiles, update_user_state

APP = "slatebandit-point-reads-test"


def _reading(pg_url: str) -> Engine:
    """An engine whose connections name themselves, so that only they are closed below."""
    return open_engine(f"{pg_url}&application_name={APP}")


def _close_readers(admin: Engine) -> int:
    """Close the readers' connections from the server's side, as a restart would; returns
    how many."""
    with admin.connect() as conn:
        closed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = :app"
            ),
            {"app": APP},
        ).scalar_one()
    return int(closed)


def _shoppers(engine: Engine) -> None:
    with engine.begin() as conn:
        update_user_state(conn, "ann", lambda old: b"state of ann")
        update_user_state(conn, "ann", lambda old: (old or b"") + b", twice")
        update_user_state(conn, "bob", lambda old: b"state of bob")
        save_user_profiles(conn, {"ann": ["segment=a", "tenure=3"]})


def test_user_reader_reads_what_read_user_reads(pg_url: str) -> None:
    engine = open_engine(pg_url)
    _shoppers(engine)
    reader = UserReader(engine)

    async def reads() -> list[object]:
        try:
            return [await reader.read(user) for user in ("ann", "bob", "nobody")]
        finally:
            await reader.close()

    with engine.connect() as conn:
        expected = [read_user(conn, user) for user in ("ann", "bob", "nobody")]
    assert asyncio.run(reads()) == expected
    assert expected[0] == ((expected[0][0][0], b"state of ann, twice"), ["segment=a", "tenure=3"])  # type: ignore[index]
    assert expected[2] == (None, [])
    engine.dispose()


def test_user_reader_survives_a_closed_connection(pg_url: str) -> None:
    admin, engine = open_engine(pg_url), _reading(pg_url)
    _shoppers(admin)
    reader = UserReader(engine, size=1)

    async def read_close_read() -> tuple[object, int, object]:
        try:
            first = await reader.read("bob")
            closed = await asyncio.to_thread(_close_readers, admin)
            return first, closed, await reader.read("bob")
        finally:
            await reader.close()

    first, closed, second = asyncio.run(read_close_read())
    assert closed >= 1  # the reader's one connection, and the engine's
    assert second == first and first[0] is not None  # type: ignore[index]
    admin.dispose()
    engine.dispose()


def test_user_reader_says_unavailable_when_the_server_is_away(pg_url: str) -> None:
    away = create_engine(make_url(pg_url).set(port=1))  # nothing listens there
    reader = UserReader(away, timeout=0.5)

    async def read() -> object:
        try:
            return await reader.read("ann")
        finally:
            await reader.close()

    with pytest.raises(DatabaseUnavailable):
        asyncio.run(read())


def test_point_reads_retry_once_on_a_closed_connection(pg_url: str) -> None:
    admin, engine = open_engine(pg_url), _reading(pg_url)
    _shoppers(admin)
    points = point_reader(engine)
    assert points.pool is not engine.pool  # a pool of its own, without the pre-ping

    def backend(conn: Connection) -> int:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())

    before = read_retrying(points, backend)
    assert _close_readers(admin) >= 1
    after = read_retrying(points, backend)  # the pooled connection was dead: a new one
    assert after != before
    assert read_retrying(points, lambda conn: read_user(conn, "bob"))[0] is not None
    # A statement the server refuses is not a dead connection: raised at once.
    with pytest.raises(Exception, match="nonexistent"):
        read_retrying(points, lambda conn: conn.execute(text("SELECT * FROM nonexistent")))
    for each in (points, engine, admin):
        each.dispose()


def test_sqlite_user_reader_reads_what_read_user_reads(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'log.db'}")
    _shoppers(engine)
    assert SqliteUserReader.serves(engine)
    reader = SqliteUserReader(engine)
    with engine.connect() as conn:
        expected = [read_user(conn, user) for user in ("ann", "bob", "nobody")]

    async def reads() -> tuple[list[object], object]:
        first = [await reader.read(user) for user in ("ann", "bob", "nobody")]
        with engine.begin() as conn:  # after the reader's last read: its next one sees it
            update_user_state(conn, "bob", lambda old: b"bob, again")
        again = await reader.read("bob")
        await reader.close()
        return first, again

    first, again = asyncio.run(reads())
    assert first == expected
    assert expected[0][1] == ["segment=a", "tenure=3"] and expected[2] == (None, [])
    with engine.connect() as conn:
        assert again == read_user(conn, "bob")
    assert again[0][1] == b"bob, again"  # type: ignore[index]
    engine.dispose()


def test_sqlite_user_reader_says_unavailable_when_the_file_cannot_be_opened(
    tmp_path: Path,
) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'log.db'}")
    _shoppers(engine)
    moved = create_engine(f"sqlite:///{tmp_path / 'gone' / 'log.db'}")  # no such directory
    reader = SqliteUserReader(moved)

    with pytest.raises(DatabaseUnavailable):
        asyncio.run(reader.read("ann"))
    assert not SqliteUserReader.serves(create_engine("sqlite://"))  # memory: per connection
    engine.dispose()
