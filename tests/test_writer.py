"""Group commit (many requests, few commits, failures stay local) and the schema-version guard."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Connection, insert, select

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
