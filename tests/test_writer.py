"""Group commit (many requests, few commits, failures stay local) and the schema-version guard."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Connection, func, insert, select

from slatebandit.items import Item
from slatebandit.logging import GroupCommitWriter, open_engine, upsert_items
from slatebandit.logging.schema import events


def _event(i: int):  # type: ignore[no-untyped-def]
    def unit(conn: Connection) -> int:
        conn.execute(
            insert(events).values(user_id=f"u{i}", item_key=1, type="view", created_at=0.0)
        )
        return i

    return unit


def _broken(conn: Connection) -> None:
    conn.execute(insert(events).values(user_id=None, item_key=1, type="view", created_at=0.0))


def test_concurrent_units_share_commits_and_failures_stay_local(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.begin() as conn:
        upsert_items(conn, [Item(item_id="x")])  # key 1, which the events refer to

    async def run() -> tuple[list[object], GroupCommitWriter]:
        writer = GroupCommitWriter(engine, max_batch=64)
        await writer.start()
        units = [_event(i) for i in range(200)]
        units.insert(50, _broken)
        results = await asyncio.gather(*(writer.submit(u) for u in units), return_exceptions=True)
        await writer.stop()
        return results, writer

    results, writer = asyncio.run(run())
    assert isinstance(results[50], Exception)
    assert [r for i, r in enumerate(results) if i != 50] == list(range(200))
    assert writer.units == 200
    assert writer.commits < 200  # requests shared transactions
    with engine.connect() as conn:
        assert len(conn.execute(select(events)).all()) == 200
    engine.dispose()


def test_commits_are_timed_on_metrics(tmp_path: Path) -> None:
    """Each unit's wait for its batch, and each batch's lock wait, write and size."""
    engine = open_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.begin() as conn:
        upsert_items(conn, [Item(item_id="x")])

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        part: sample("slatebandit_commit_seconds_count", part=part)
        for part in ("queued", "lock", "write")
    }
    units_before = sample("slatebandit_commit_units_sum")

    async def run() -> GroupCommitWriter:
        writer = GroupCommitWriter(engine, max_batch=16)
        await writer.start()
        await asyncio.gather(*(writer.submit(_event(i)) for i in range(40)))
        await writer.stop()
        return writer

    writer = asyncio.run(run())
    engine.dispose()
    assert sample("slatebandit_commit_seconds_count", part="queued") - before["queued"] == 40
    for part in ("lock", "write"):  # once a batch
        assert sample("slatebandit_commit_seconds_count", part=part) - before[part] == (
            writer.commits
        )
    assert sample("slatebandit_commit_units_sum") - units_before == 40
    assert writer.commits >= 3  # at most 16 a batch


def test_submit_requires_a_running_writer(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(GroupCommitWriter(engine).submit(_event(1)))
    engine.dispose()


def test_a_database_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    from sqlalchemy import text

    from slatebandit.errors import ConfigError

    url = f"sqlite:///{tmp_path / 's.db'}"
    open_engine(url).dispose()
    open_engine(url).dispose()  # the same version opens again
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.execute(text("update schema_info set value = 999"))
    engine.dispose()
    with pytest.raises(ConfigError, match="schema version 999"):
        open_engine(url)


def test_decision_records_are_written_together_and_each_gets_its_own_id(tmp_path: Path) -> None:
    from slatebandit.logging import DecisionRecord, ShownSlot
    from slatebandit.logging.schema import slots

    engine = open_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.begin() as conn:
        upsert_items(conn, [Item(item_id=f"i{i}") for i in range(3)])

    def record(i: int) -> DecisionRecord:
        shown = tuple(ShownSlot(j, j + 1, 0.5, "exploit", "popular", 0.0) for j in range(3))
        return DecisionRecord(f"{i:032x}", 0.0, f"u{i}", "vw", 0, b"p", shown)

    async def run() -> list[object]:
        writer = GroupCommitWriter(engine)
        await writer.start()
        results = await asyncio.gather(*(writer.submit(record(i)) for i in range(40)))
        await writer.stop()
        assert writer.commits < 40
        return list(results)

    results = asyncio.run(run())
    assert len({r.decision_id for r in results}) == 40  # type: ignore[attr-defined]
    assert all(r.item_keys == (1, 2, 3) for r in results)  # type: ignore[attr-defined]
    with engine.connect() as conn:
        assert len(conn.execute(select(slots)).all()) == 120
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of either kind with 50 items (keys 1 to 50)."""
    url = (
        f"sqlite:///{tmp_path / 'd.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    engine = open_engine(url)
    with engine.begin() as conn:
        upsert_items(conn, [Item(item_id=f"i{i}") for i in range(50)])
    engine.dispose()
    return url


def test_each_decision_gets_the_id_of_its_own_row_and_its_slots(database: str) -> None:
    """Batches larger than one statement of slots (each driver writes many rows a statement;
    SQLite numbers the decisions from ``lastrowid``, PostgreSQL returns each one's id beside
    its event id), after the newest decision was deleted: each id returned is the row of that
    record, and its slots are stored as shown."""
    from slatebandit.logging import DecisionRecord, ShownSlot
    from slatebandit.logging.decisions import PARAMETERS_A_STATEMENT
    from slatebandit.logging.schema import decisions, slots

    rng = np.random.default_rng(5)

    def record(i: int) -> DecisionRecord:
        keys = rng.choice(np.arange(1, 51), size=int(rng.integers(1, 9)), replace=False)
        shown = tuple(
            ShownSlot(j, int(key), float(rng.uniform(0.01, 1)), "explore", "ann", float(j) / 3)
            for j, key in enumerate(keys)
        )
        return DecisionRecord(
            f"{i:032x}",
            float(i),
            f"u{i % 7}",
            "vw",
            i % 3,
            bytes([i % 256]),
            shown,
            arm="a" if i % 2 else None,
        )

    engine = open_engine(database)
    first = [record(i) for i in range(3)]
    with engine.begin() as conn:
        newest = max(s.decision_id for s in DecisionRecord.write_many(conn, first))
        conn.execute(slots.delete().where(slots.c.decision_id == newest))
        conn.execute(decisions.delete().where(decisions.c.id == newest))
    per_statement = PARAMETERS_A_STATEMENT[engine.dialect.name]
    assert per_statement // 7 < 300 * 4  # the slots take several statements
    batch = [record(i) for i in range(3, 303)]
    with engine.begin() as conn:
        shown = DecisionRecord.write_many(conn, batch)
    assert len({s.decision_id for s in shown}) == len(batch)
    described = engine.dialect.name == "sqlite"  # PostgreSQL keeps these in the payload only
    with engine.connect() as conn:
        for written, record_ in zip(shown, batch, strict=True):
            row = conn.execute(select(decisions).where(decisions.c.id == written.decision_id)).one()
            assert (row.event_id, row.user_id, row.model_version, row.payload, row.arm) == (
                record_.event_id,
                record_.user_id,
                record_.model_version,
                record_.payload,
                record_.arm,
            )
            assert written.item_keys == tuple(s.item_key for s in record_.shown)
            stored = conn.execute(
                select(slots)
                .where(slots.c.decision_id == written.decision_id)
                .order_by(slots.c.slot)
            ).all()
            assert [(s.slot, s.item_key, s.propensity) for s in stored] == [
                (s.slot, s.item_key, s.propensity) for s in record_.shown
            ]
            expected = [
                (s.kind, s.source, s.score) if described else (None, None, None)
                for s in record_.shown
            ]
            assert [(s.kind, s.source, s.score) for s in stored] == expected
        assert conn.execute(select(func.count()).select_from(decisions)).scalar() == 302
    engine.dispose()


def test_the_write_lock_is_held_for_the_commit_and_its_file_kept_open(tmp_path: Path) -> None:
    import fcntl

    from slatebandit.logging.writer import WriteLock

    path = tmp_path / "db.writelock"
    lock = WriteLock(path)
    assert not path.exists()  # opened at the first commit, not before
    with path.open("a") as other:  # another process's lock on the same file
        for _ in range(2):
            with lock:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after
            fcntl.flock(other, fcntl.LOCK_UN)
        handle = lock._handle
        assert handle is not None and not handle.closed  # one file for every commit
        lock.close()
        assert handle.closed
    with WriteLock(None):  # not SQLite: nothing to lock
        pass


def test_a_serving_worker_takes_the_gil_back_sooner(tmp_path: Path) -> None:
    """The writer's thread waits up to the switch interval each time it takes the GIL back
    from a busy loop: a serving worker shortens it from Python's 5 ms."""
    import sys

    from starlette.testclient import TestClient

    from slatebandit.recommender.core import GIL_SWITCH_SECONDS
    from slatebandit.server import create_app
    from tests.conftest import make_settings

    default = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        with TestClient(create_app(make_settings(tmp_path))) as client:
            assert client.get("/healthz").status_code == 200
            assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_SECONDS)
        assert GIL_SWITCH_SECONDS < 0.005
    finally:
        sys.setswitchinterval(default)


def test_decisions_outside_a_transaction_are_refused(database: str) -> None:
    """SQLAlchemy commits only a transaction it began: rows its driver's cursor wrote without
    one would be rolled back when the connection closes, so that is refused instead."""
    from slatebandit.logging import DecisionRecord, ShownSlot
    from slatebandit.logging.schema import decisions

    engine = open_engine(database)
    shown = (ShownSlot(0, 1, 1.0, "exploit", "popular", 0.0),)
    record = DecisionRecord("0" * 32, 0.0, "u", "vw", 0, b"p", shown)
    with engine.connect() as conn, pytest.raises(RuntimeError, match="inside a transaction"):
        DecisionRecord.write_many(conn, [record])
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(decisions)).scalar() == 0
    engine.dispose()
