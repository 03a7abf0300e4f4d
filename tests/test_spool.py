"""The spool and its shipping, on a real SQLite database and real files.

The database outage itself (a real PostgreSQL stopped under load) is ``test_outage.py``; here
the worker is told the database is away (``Outage.failed``, what a failed write calls) so each
step of spooling and shipping can be checked exactly: record format, torn tails, the order of
shipping across segments, and that shipping resumed after a crash ships nothing twice.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

import msgpack
import psycopg
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from slatebandit.errors import DatabaseUnavailable
from slatebandit.logging.decisions import DecisionRecord, ShownSlot, insert_event
from slatebandit.logging.engine import is_unavailable
from slatebandit.logging.schema import (
    decisions,
    events,
    rewards,
    slots,
    spool_orphans,
    spool_progress,
)
from slatebandit.logging.spool import (
    FRAME,
    SpooledEvent,
    SpooledReward,
    SpoolFull,
    SpoolWriter,
    decode,
    encode,
    frame,
    is_held,
    read,
    segments,
    set_progress,
)
from slatebandit.policies.learner import Learner
from slatebandit.recommender import Recommender, shipping
from slatebandit.recommender.outage import Outage
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog

DECISION = DecisionRecord(
    event_id="e" * 32,
    created_at=1.5,
    user_id="u1",
    policy="vw",
    model_version=3,
    payload=b"\x00\x01payload",
    shown=(ShownSlot(0, 7, 0.25, "exploit", "popular", 0.5),),
    experiment="exp",
    arm="b",
)


def test_every_record_kind_round_trips() -> None:
    for record in (
        DECISION,
        SpooledReward("e" * 32, 7, "click", 1.0, 2.5),
        SpooledEvent("u1", 7, "view", 3.5, "r" * 32),
    ):
        assert decode(encode(record)) == record


def test_a_torn_or_corrupt_frame_ends_the_segment(tmp_path: Path) -> None:
    path = tmp_path / "a.spool"
    whole = [frame(encode(SpooledEvent("u", i, "view", float(i), f"{i:032d}"))) for i in range(3)]
    path.write_bytes(b"".join(whole) + whole[0][: FRAME.size + 3])  # a kill mid-append
    found = list(read(path, 0))
    assert [r.item_key for _, r in found] == [0, 1, 2]  # type: ignore[union-attr]
    assert found[-1][0] == sum(len(w) for w in whole)
    corrupt = bytearray(path.read_bytes())
    corrupt[len(whole[0]) + FRAME.size] ^= 0xFF  # the second record's body, CRC now wrong
    path.write_bytes(bytes(corrupt))
    assert len(list(read(path, 0))) == 1


def test_spool_writer_holds_its_segment_until_closed_and_refuses_past_its_limit(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        spool = SpoolWriter(tmp_path / "spool", max_bytes=400)
        await spool.start()
        await spool.submit(DECISION)
        (path,) = segments(tmp_path / "spool")
        assert is_held(path)  # a shipper may read it but not delete it
        with pytest.raises(SpoolFull):
            for _ in range(10):
                await spool.submit(DECISION)
        await spool.close_segment()
        assert not is_held(path)
        await spool.stop()
        assert [r for _, r in read(path, 0)] == [DECISION] * spool.appended

    asyncio.run(run())


@pytest.fixture
def served(tmp_path: Path, small_catalog):  # type: ignore[no-untyped-def]
    # The watcher is slow so the test decides when the database "returns".
    settings = make_settings(tmp_path, db_probe_seconds=3600, learner="off")
    seed_catalog(settings.database_url, small_catalog)
    with TestClient(create_app(settings)) as client:
        yield client, client.app_state["recommender"], settings.database_url


def _count(url: str, table) -> int:  # type: ignore[no-untyped-def]
    engine = create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(table)).scalar_one()
    engine.dispose()
    return int(n)


def test_while_the_database_is_away_records_are_spooled_then_shipped_once(served) -> None:  # type: ignore[no-untyped-def]
    client, s, url = served
    s.outage.failed()
    slate = client.post("/v1/slates", json={"user_id": "shopper", "k": 4}).json()
    assert slate["logged"] == "spool" and len(slate["items"]) == 4
    pick = slate["items"][0]["item_id"]
    reward = client.post("/v1/rewards", json={"event_id": slate["event_id"], "item_id": pick})
    assert reward.status_code == 202
    assert reward.json()["logged"] == "spool" and reward.json()["duplicate"] is None
    # Not shown in that decision: refused at once, as ever, since this worker knows it.
    shown = {item["item_id"] for item in slate["items"]}
    other = next(i for i in s.store.catalog.item_ids if i not in shown)
    wrong = client.post("/v1/rewards", json={"event_id": slate["event_id"], "item_id": other})
    assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "item_id"
    # A decision this worker never made may be in another's spool: checked when shipped.
    stray = client.post("/v1/rewards", json={"event_id": "f" * 32, "item_id": pick})
    assert stray.status_code == 202 and stray.json()["logged"] == "spool"
    event = client.post("/v1/events", json={"user_id": "shopper", "item_id": pick, "type": "view"})
    assert event.status_code == 202 and event.json()["logged"] == "spool"
    health = client.get("/healthz").json()
    assert health["status"] == "degraded" and health["database"] == "unreachable"
    assert health["spool"]["spooled"] == 4 and health["spool"]["segments"] == 1
    assert _count(url, decisions) == 0 and _count(url, rewards) == 0  # nothing reached it

    client.portal.call(s.watch)  # the database answers: ship
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["spool"]["segments"] == 0
    assert health["spool"]["shipped"] == 3 and health["spool"]["dropped"] == 0
    assert _count(url, decisions) == 1 and _count(url, slots) == 4
    assert _count(url, rewards) == 1 and _count(url, events) == 1
    assert _count(url, spool_orphans) == 1  # the stray waits for a decision to ship
    assert _count(url, spool_progress) == 0  # deleted segments leave no progress behind
    # The cached decision now carries its database id: a second reward goes straight there.
    again = client.post("/v1/rewards", json={"event_id": slate["event_id"], "item_id": pick})
    assert again.json()["logged"] == "database" and again.json()["duplicate"] is True
    # The shipped reward and view shaped the shopper's state, as they would have online.
    state = client.portal.call(s.user, "shopper")[0]
    assert state.recent_keys(5)[0] == s.store.catalog.key_of[pick]


def _spool(s: Recommender, portal, record) -> None:  # type: ignore[no-untyped-def]
    portal.call(s.outage.spool.submit, record)


def _decision(s: Recommender, event_id: str, keys: list[int]) -> DecisionRecord:
    shown = tuple(ShownSlot(j, k, 0.5, "exploit", "popular", 0.0) for j, k in enumerate(keys))
    return DecisionRecord(event_id, 10.0, "shopper", "vw", 0, b"\x80", shown)


def test_a_reward_shipped_from_an_older_segment_finds_its_decision_in_a_newer_one(
    served,
) -> None:  # type: ignore[no-untyped-def]
    client, s, url = served
    keys = [1, 2]  # item keys of the catalog
    # Worker A's segment is older (it spooled an event first); B spools the decision, then
    # A the reward for it. Shipping segment by segment would find A's reward before B's
    # decision and drop it; shipping every decision first does not.
    a = s.outage.spool
    b = SpoolWriter(a.directory, max_bytes=1 << 30)
    client.portal.call(b.start)
    _spool(s, client.portal, SpooledEvent("shopper", keys[0], "view", 9.0, "a" * 32))
    client.portal.call(b.submit, _decision(s, "d" * 32, keys))
    _spool(s, client.portal, SpooledReward("d" * 32, keys[1], "click", 1.0, 11.0))
    client.portal.call(b.stop)
    assert len(segments(a.directory)) == 2
    client.portal.call(s.watch)
    assert _count(url, rewards) == 1 and s.outage.dropped == 0
    assert segments(a.directory) == []


def test_shipping_resumed_after_a_crash_ships_nothing_twice(
    served, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    client, s, url = served
    keys = [1, 2]  # item keys of the catalog
    for i in range(5):
        event_id = f"{i:032d}"
        _spool(s, client.portal, _decision(s, event_id, keys))
        _spool(s, client.portal, SpooledReward(event_id, keys[0], "click", 1.0, 11.0))
        _spool(s, client.portal, SpooledEvent("shopper", keys[1], "view", 12.0, event_id))
    client.portal.call(s.outage.spool.close_segment)
    (path,) = segments(s.outage.directory)
    # A crash after two chunks of decisions and one of the rest: their progress is committed.
    monkeypatch.setattr(shipping, "SHIP_CHUNK", 2)
    for unit in (shipping._decisions_unit(s, path),) * 2 + (shipping._others_unit(s, path, 10**9),):
        assert client.portal.call(s.writer.submit, unit) is not None
    assert _count(url, decisions) == 4 and _count(url, rewards) == 1 and _count(url, events) == 1
    # After a restart, everything shipped, then a crash before the file was deleted...
    for unit in (shipping._decisions_unit(s, path), shipping._others_unit(s, path, 10**9)):
        while client.portal.call(s.writer.submit, unit) is not None:
            pass
    assert _count(url, decisions) == 5 and _count(url, rewards) == 5 and _count(url, events) == 5
    # ...and another restart finds it all shipped, ships nothing again, and deletes it.
    client.portal.call(s.watch)
    assert _count(url, decisions) == 5 and _count(url, rewards) == 5 and _count(url, events) == 5
    assert segments(s.outage.directory) == [] and s.outage.shipped == 0


def test_records_committed_as_the_connection_broke_are_not_shipped_again(served) -> None:  # type: ignore[no-untyped-def]
    client, s, url = served
    record = _decision(s, "c" * 32, [1])
    event = SpooledEvent("shopper", 1, "view", 5.0, "c" * 32)
    reward = SpooledReward("c" * 32, 1, "click", 1.0, 6.0)

    def committed(conn) -> None:  # type: ignore[no-untyped-def]
        insert_event(conn, user_id="shopper", item_key=1, type="view", created_at=5.0, ref="c" * 32)

    # Each did reach the database, but its commit's answer was lost, so it was spooled too.
    for unit, spooled in ((record, record), (committed, event)):
        client.portal.call(s.writer.submit, unit)
        _spool(s, client.portal, spooled)
    _spool(s, client.portal, reward)
    _spool(s, client.portal, reward)  # the click tracker retried
    client.portal.call(s.watch)
    assert _count(url, decisions) == 1 and _count(url, slots) == 1
    assert _count(url, events) == 1 and _count(url, rewards) == 1


def test_records_of_a_shopper_erased_after_they_were_spooled_are_dropped(served) -> None:  # type: ignore[no-untyped-def]
    client, s, url = served
    slate = client.post("/v1/slates", json={"user_id": "gone", "k": 3}).json()
    assert slate["logged"] == "database"
    pick = slate["items"][0]["item_id"]
    s.outage.failed()
    late = client.post("/v1/slates", json={"user_id": "gone", "k": 3}).json()
    client.post("/v1/rewards", json={"event_id": slate["event_id"], "item_id": pick})
    client.post("/v1/events", json={"user_id": "gone", "item_id": pick, "type": "view"})
    s.outage.degraded = False  # the database is back, this worker's spool not yet shipped
    assert client.delete("/v1/users/gone").status_code == 200
    client.portal.call(s.watch)
    # The decision spooled before the erasure, its reward and the event never reach the
    # database; the decision logged before it stays redacted.
    assert _count(url, decisions) == 1 and _count(url, rewards) == 0
    assert _count(url, events) == 0 and s.outage.dropped == 3
    assert late["event_id"] not in str(_all(url, decisions))
    # A shopper who comes back after the erasure is stored as anyone else.
    again = client.post("/v1/slates", json={"user_id": "gone", "k": 3}).json()
    assert again["logged"] == "database" and _count(url, decisions) == 2


def _all(url: str, table) -> list:  # type: ignore[no-untyped-def, type-arg]
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(table)).all()
    engine.dispose()
    return rows


def test_a_reward_waits_for_a_decision_shipped_later_from_elsewhere(
    served, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    client, s, url = served
    # This machine's spool holds the reward; the decision is in another machine's, which
    # ships later (here: a second directory, shipped by the same worker afterwards).
    _spool(s, client.portal, SpooledReward("d" * 32, 1, "click", 1.0, 11.0))
    _spool(s, client.portal, SpooledReward("9" * 32, 1, "click", 1.0, 11.0))  # never comes
    client.portal.call(s.watch)
    assert _count(url, rewards) == 0 and _count(url, spool_orphans) == 2
    other = SpoolWriter(s.outage.directory.parent / "elsewhere", max_bytes=1 << 30)
    client.portal.call(other.start)
    client.portal.call(other.submit, _decision(s, "d" * 32, [1, 2]))
    client.portal.call(other.stop)
    monkeypatch.setattr(s.outage.spool, "directory", other.directory)
    client.portal.call(s.watch)
    assert _count(url, rewards) == 1 and _count(url, spool_orphans) == 1
    # A week later the other is given up on, and counted.
    monkeypatch.setattr(shipping, "ORPHAN_DAYS", 0.0)
    other = SpoolWriter(other.directory, max_bytes=1 << 30)
    client.portal.call(other.start)
    client.portal.call(other.submit, SpooledEvent("shopper", 1, "view", 5.0, "e" * 32))
    client.portal.call(other.stop)
    client.portal.call(s.watch)
    assert _count(url, spool_orphans) == 0 and s.outage.dropped == 1


def test_an_unreadable_record_is_skipped_and_counted_and_a_zeroed_tail_ends_the_segment(
    served,
) -> None:  # type: ignore[no-untyped-def]
    client, s, url = served
    _spool(s, client.portal, _decision(s, "a" * 32, [1]))
    client.portal.call(s.outage.spool.close_segment)
    (path,) = segments(s.outage.directory)
    foreign = frame(msgpack.packb({"k": "z", "what": 1}))  # a kind this version does not know
    later = frame(encode(_decision(s, "b" * 32, [2])))
    with path.open("ab") as handle:
        handle.write(foreign + later + bytes(64))  # then a tail a power cut left zeroed
    client.portal.call(s.watch)
    assert _count(url, decisions) == 2 and s.outage.dropped == 1
    assert segments(s.outage.directory) == []


def test_a_learner_waits_while_a_spool_is_half_shipped(served) -> None:  # type: ignore[no-untyped-def]
    client, s, url = served
    slate = client.post("/v1/slates", json={"user_id": "shopper", "k": 3}).json()
    assert slate["logged"] == "database"
    learner = Learner(s.engine, replace(s.settings, reward_wait=0.0), "test")
    engine = create_engine(url)
    with engine.begin() as conn:  # decisions shipped, their rewards not yet
        set_progress(conn, "x.spool", decisions=100, others=10)
    assert learner.step() == 0
    with engine.begin() as conn:
        set_progress(conn, "x.spool", decisions=100, others=100)
    engine.dispose()
    assert learner.step() == 1


def test_only_connection_failures_count_as_an_outage(tmp_path: Path) -> None:
    refused = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    with pytest.raises(OperationalError) as away:
        refused.connect()
    assert is_unavailable(away.value)
    lite = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(OperationalError) as wrong, lite.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert not is_unavailable(wrong.value)  # a bug, not an outage: a 500, not the spool
    deadlock = OperationalError("UPDATE ...", {}, psycopg.errors.DeadlockDetected("deadlock"))
    assert not is_unavailable(deadlock)  # the writer retries its units one by one
    locked = OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked"))
    assert is_unavailable(locked)


def test_a_database_that_stops_answering_times_out_into_the_spool(tmp_path: Path) -> None:
    async def run() -> None:
        outage = Outage(create_engine("sqlite://"), tmp_path / "spool", max_bytes=1 << 20)
        outage.timeout = 0.05
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with pytest.raises(DatabaseUnavailable):
            await outage.in_time(never)
        assert never.cancelled()  # the writer will skip it; its spooled copy ships once
        await outage.spool.start()
        hangs = asyncio.get_running_loop().create_future
        decision, logged = await outage.log_decision(lambda _: hangs(), DECISION)
        assert logged == "spool" and outage.degraded and decision is not None
        await outage.spool.stop()

    asyncio.run(run())
