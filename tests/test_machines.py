"""The machine registry and parked rewards, on real SQLite and PostgreSQL.

The registry's rules (which machines may hold unshipped records, which parked rewards can go)
are checked on both databases by writing rows as machines would. Then two serving apps on one
PostgreSQL, each with its own spool, play two machines: a reward posted to B for a decision
in A's spool is accepted and parked, and stored exactly once, with its decision, when A ships;
the learner then finds it on time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from starlette.testclient import TestClient

from slatebandit.errors import InvalidInput
from slatebandit.items import Item
from slatebandit.logging import machines, open_engine
from slatebandit.logging.decisions import DecisionRecord, ShownSlot
from slatebandit.logging.learning import due_decisions, late_rewards
from slatebandit.logging.machines import (
    GRACE_SECONDS,
    ORPHANS_LOCK,
    SILENT_AFTER,
    Machine,
    decision_or_park,
    expire_orphans,
    holding,
    lock_orphans,
    report,
    stopped,
)
from slatebandit.logging.schema import decisions, rewards, spool_orphans
from slatebandit.logging.schema import machines as machine_rows
from slatebandit.logging.spool import SpooledReward, segments, spooling_since
from slatebandit.policies.learner import Learner
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog

NOW = 1_700_000_000.0
DAY = 86400.0


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    seed_catalog(url, [Item(item_id=f"i{n}", category="c") for n in range(3)])
    engine = open_engine(url)
    yield engine
    engine.dispose()


def _machine(name: str) -> Machine:
    return Machine(name * 32, f"host-{name}", f"/spool/{name}", NOW - 100)


def _report(engine: Engine, name: str, at: float, **fields: object) -> None:
    values: dict = {"spooling_since": None, "spool_bytes": 0, **fields}  # type: ignore[type-arg]
    with engine.begin() as conn:
        report(conn, _machine(name), at, **values)


def _holding(engine: Engine, now: float = NOW, besides: str | None = None) -> list[str]:
    with engine.connect() as conn:
        return sorted(holding(conn, now, besides=besides))


def test_machine_id_is_made_once_and_kept_in_the_spool_directory(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first = machines.machine_id(spool)
    assert len(first) == 32 and int(first, 16) >= 0
    assert machines.machine_id(spool) == first  # every worker and restart of the machine
    assert machines.machine_id(tmp_path / "other") != first
    assert segments(spool) == [] and spooling_since(spool) is None  # the id is no segment


def test_which_machines_may_hold_unshipped_records(engine: Engine) -> None:
    _report(engine, "a", NOW)  # up, spool empty
    _report(engine, "b", NOW, spooling_since=NOW - 30, spool_bytes=4096)
    _report(engine, "c", NOW - SILENT_AFTER - 1)  # not heard from: dead or cut off
    _report(engine, "d", NOW - 3600)
    with engine.begin() as conn:
        stopped(conn, _machine("d"), NOW - 3600)  # stopped with an empty spool
    assert _holding(engine) == ["b" * 32, "c" * 32]
    assert _holding(engine, besides="b" * 32) == ["c" * 32]
    # A reports its spool shipped, B reports again: only the silent C is left.
    _report(engine, "b", NOW + 1)
    assert _holding(engine, NOW + 1) == ["c" * 32]
    # E finds the database again after an outage: until each of the others reports after
    # that, it may hold what it spooled (a shared outage ended; C is still silent).
    _report(engine, "e", NOW + 2, recovered=True, spooling_since=NOW - 10, spool_bytes=1)
    assert _holding(engine, NOW + 2) == ["a" * 32, "b" * 32, "c" * 32, "e" * 32]
    _report(engine, "a", NOW + 3)
    _report(engine, "b", NOW + 3)
    assert _holding(engine, NOW + 3) == ["c" * 32, "e" * 32]
    # A stopped machine that starts again is a machine like any other.
    _report(engine, "d", NOW + 3)
    assert "d" * 32 not in _holding(engine, NOW + 3)
    with engine.connect() as conn:
        row = conn.execute(select(machine_rows).where(machine_rows.c.machine_id == "d" * 32)).one()
    assert row.stopped_at is None and row.hostname == "host-d" and row.started_at == NOW - 100


def _park(engine: Engine, event_id: str, at: float) -> None:
    with engine.begin() as conn:
        assert decision_or_park(conn, SpooledReward(event_id, 1, "click", 1.0, at), at) is None


def _parked(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        query = select(spool_orphans.c.event_id).order_by(spool_orphans.c.event_id)
        return list(conn.execute(query).scalars())


def test_a_parked_reward_lasts_while_a_machine_may_still_ship_its_decision(
    engine: Engine,
) -> None:
    _park(engine, "1" * 32, NOW)
    _park(engine, "2" * 32, NOW + 600)
    _report(engine, "a", NOW + 700, spooling_since=NOW - 60, spool_bytes=10)  # may hold both
    _report(engine, "b", NOW + 700)
    with engine.begin() as conn:
        assert expire_orphans(conn, NOW + 700, 7 * DAY) == 0
    # A shipped its spool: a reward parked before that (and GRACE_SECONDS) has no hope left.
    _report(engine, "a", NOW + 700)
    with engine.begin() as conn:
        assert expire_orphans(conn, NOW + 700, 7 * DAY) == 1
    assert _parked(engine) == ["2" * 32]
    # B goes silent: it may hold the second one's decision, for up to the age limit.
    _report(engine, "a", NOW + 600 + GRACE_SECONDS + 10)
    with engine.begin() as conn:
        assert expire_orphans(conn, NOW + 600 + GRACE_SECONDS + 10, 7 * DAY) == 0
        assert expire_orphans(conn, NOW + 600 + 7 * DAY + 1, 7 * DAY) == 1
    assert _parked(engine) == []
    # Machines not heard from in that long are forgotten: they no longer count as spooling.
    with engine.begin() as conn:
        assert sorted(holding(conn, NOW + 1000 + 7 * DAY)) == ["a" * 32, "b" * 32]
        expire_orphans(conn, NOW + 1000 + 7 * DAY, 7 * DAY)
        assert holding(conn, NOW + 1000 + 7 * DAY) == []


def test_an_operator_forgets_a_dead_machine_and_its_parked_rewards_go(engine: Engine) -> None:
    """A machine that died for good stays silent, so rewards for unknown decisions wait for
    its spool for days; ``forget`` ends that. A running machine cannot be forgotten."""
    _report(engine, "a", NOW)
    _report(engine, "b", NOW - 60, spooling_since=NOW - 90, spool_bytes=4096)  # died spooling
    _report(engine, "c", NOW - 3600)
    with engine.begin() as conn:
        stopped(conn, _machine("c"), NOW - 3600)
    _park(engine, "1" * 32, NOW - 30)
    with engine.begin() as conn:
        listed = machines.registered(conn, NOW)
    assert [(m.machine_id[0], m.may_hold) for m in listed] == [
        ("a", False),
        ("b", True),
        ("c", False),
    ]
    assert listed[1].spool_bytes == 4096 and listed[2].stopped_at == NOW - 3600
    with engine.begin() as conn, pytest.raises(InvalidInput, match="it is running"):
        machines.forget(conn, "a" * 32, NOW + 1)
    with engine.begin() as conn, pytest.raises(InvalidInput, match="no machine 'zz'"):
        machines.forget(conn, "zz", NOW + 1)
    later = NOW + GRACE_SECONDS
    _report(engine, "a", later)
    with engine.begin() as conn:
        assert expire_orphans(conn, later, 7 * DAY) == 0  # the silent B may hold its decision
        machines.forget(conn, "b" * 32, later)
        assert holding(conn, later) == []
        assert expire_orphans(conn, later, 7 * DAY) == 1
        # A stopped machine may be forgotten at once: it holds nothing.
        machines.forget(conn, "c" * 32, later)
        assert [m.machine_id for m in machines.registered(conn, later)] == ["a" * 32]
    assert _parked(engine) == []


@pytest.mark.postgres
def test_the_machines_command_lists_and_forgets(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from slatebandit.cli import main

    engine = open_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(machine_rows.delete())
        _report(engine, "d", time.time() - 3600, spooling_since=time.time() - 4000, spool_bytes=7)
    finally:
        engine.dispose()
    assert main(["machines", "list", "--db", pg_url]) == 0
    listed = capsys.readouterr().out
    assert "d" * 32 in listed and "7 bytes since" in listed and "may hold records" in listed
    assert main(["machines", "forget", "d" * 32, "--db", pg_url]) == 0
    assert "forgot machine" in capsys.readouterr().out
    assert main(["machines", "list", "--db", pg_url]) == 0
    assert "d" * 32 not in capsys.readouterr().out
    assert main(["machines", "forget", "d" * 32, "--db", pg_url]) == 2  # no longer known


def test_parking_finds_a_decision_that_arrived_and_stores_nothing_then(engine: Engine) -> None:
    record = DecisionRecord(
        "3" * 32, NOW, "u", "vw", 0, b"\x80", (ShownSlot(0, 1, 0.5, "exploit", "popular", 0.0),)
    )
    with engine.begin() as conn:
        DecisionRecord.write_many(conn, [record])
    with engine.begin() as conn:
        found = decision_or_park(conn, SpooledReward("3" * 32, 1, "click", 1.0, NOW), NOW)
    assert found is not None and found.item_keys == (1,)
    assert _parked(engine) == []


@pytest.mark.postgres
def test_a_reward_parked_as_its_decision_ships_is_never_missed(pg_url: str) -> None:
    """The shipper holds the orphans lock with the decision written but not committed; a
    reward parked meanwhile waits for it, then finds the decision instead of parking."""
    seed_catalog(pg_url, [Item(item_id="i1", category="c")])
    engine = open_engine(pg_url)
    record = DecisionRecord(
        "4" * 32, NOW, "u", "vw", 0, b"\x80", (ShownSlot(0, 1, 0.5, "exploit", "popular", 0.0),)
    )
    found: list[object] = []

    def park() -> None:
        with engine.begin() as conn:
            found.append(decision_or_park(conn, SpooledReward("4" * 32, 1, "click", 1.0, NOW), NOW))

    with engine.begin() as shipper:
        DecisionRecord.write_many(shipper, [record])
        lock_orphans(shipper)
        parker = threading.Thread(target=park)
        parker.start()
        deadline = time.monotonic() + 30
        with engine.connect() as probe:  # until the parker waits on the lock
            waiting = text(
                "select count(*) from pg_locks where locktype = 'advisory' and not granted"
                " and classid = :high and objid = :low"
            ).bindparams(high=ORPHANS_LOCK >> 32, low=ORPHANS_LOCK & 0xFFFFFFFF)
            while probe.execute(waiting).scalar_one() == 0:
                assert time.monotonic() < deadline, "the parker never waited for the lock"
                time.sleep(0.01)  # another connection's progress: nothing to await
    parker.join(timeout=30)
    assert found and found[0] is not None
    assert _parked(engine) == []
    engine.dispose()


# Two machines on one PostgreSQL ------------------------------------------------------------


@pytest.fixture
def two_machines(tmp_path: Path, pg_url: str, small_catalog):  # type: ignore[no-untyped-def]
    seed_catalog(pg_url, small_catalog)
    # The probe is slow so the test decides when machine A finds the database again.
    apps = []
    for name in ("a", "b"):
        settings = make_settings(
            tmp_path / name, db_url=pg_url, db_probe_seconds=3600, learner="off"
        )
        apps.append(TestClient(create_app(settings)))
    with apps[0] as a, apps[1] as b:
        yield a, b, pg_url


def _count(url: str, table, *where) -> int:  # type: ignore[no-untyped-def]
    engine = open_engine(url, create=False)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
    engine.dispose()
    return int(n)


@pytest.mark.postgres
def test_a_reward_for_a_decision_in_another_machines_spool_is_parked_then_joined_once(
    two_machines,
) -> None:  # type: ignore[no-untyped-def]
    a, b, url = two_machines
    ra, rb = a.app_state["recommender"], b.app_state["recommender"]
    assert ra.outage.machine.machine_id != rb.outage.machine.machine_id
    stray = {"event_id": "f" * 32, "item_id": "sku-0000001"}
    assert b.post("/v1/rewards", json=stray).status_code == 404  # nobody spools: as ever

    # A loses the database and spools a slate; once it can report again (before it ships),
    # the registry says its spool holds records.
    ra.outage.failed()
    slate = a.post("/v1/slates", json={"user_id": "shopper", "k": 4}).json()
    assert slate["logged"] == "spool"
    ra.outage.report()
    pick = {"event_id": slate["event_id"], "item_id": slate["items"][1]["item_id"]}

    # Bad input is still refused, naming the field, and writes nothing.
    for body, field in (
        ({**pick, "event_id": "F" * 32}, "event_id"),
        ({**pick, "event_id": "f" * 31}, "event_id"),
        ({**pick, "item_id": "no-such-item"}, "item_id"),
        ({**pick, "value": -1}, "value"),
    ):
        bad = b.post("/v1/rewards", json=body)
        assert bad.status_code in (400, 422) and bad.json()["error"]["field"] == field
    assert _count(url, spool_orphans) == 0

    posted = time.time()
    parked = b.post("/v1/rewards", json=pick)
    assert parked.status_code == 202
    assert parked.json()["logged"] == "parked" and parked.json()["duplicate"] is None
    assert b.post("/v1/rewards", json=pick).json()["logged"] == "parked"  # the tracker retried
    assert _count(url, spool_orphans) == 2 and _count(url, rewards) == 0

    a.portal.call(ra.watch)  # A finds the database and ships its spool
    assert segments(ra.outage.directory) == []
    (decision_id,) = _ids(url, slate["event_id"])
    assert _count(url, rewards, rewards.c.decision_id == decision_id) == 1  # exactly once
    assert _count(url, spool_orphans) == 0
    again = b.post("/v1/rewards", json=pick).json()
    assert again["logged"] == "database" and again["duplicate"] is True
    assert b.post("/v1/rewards", json=stray).status_code == 404  # A shipped all: 404 again

    # The shipped decision keeps the time it was made: it is due to the learner at once, not
    # a reward wait after it shipped. Its parked reward arrived with it, in one transaction,
    # so the learner finds it there; it counts as on time (no late reward).
    with ra.engine.connect() as conn:
        made = conn.execute(
            select(decisions.c.created_at).where(decisions.c.id == decision_id)
        ).scalar_one()
    assert made < posted
    learner = Learner(ra.engine, replace(ra.settings, reward_wait=0.0), "test")
    with ra.engine.connect() as conn:
        due = due_decisions(conn, decision_id - 1, time.time(), 10)
    assert due[0].decision_id == decision_id and due[0].rewards
    with ra.engine.connect() as conn:
        stored_at = conn.execute(
            select(rewards.c.created_at).where(rewards.c.decision_id == decision_id)
        ).scalar_one()
    assert posted <= stored_at < time.time()  # when it was posted to B, not when it shipped
    while learner.step(now=time.time() + 5):
        pass
    learner.checkpoint()
    with ra.engine.connect() as conn:
        assert late_rewards(conn) == 0


def _ids(url: str, event_id: str) -> list[int]:
    engine = open_engine(url, create=False)
    query = select(decisions.c.id).where(decisions.c.event_id == event_id)
    with engine.connect() as conn:
        found = list(conn.execute(query).scalars())
    engine.dispose()
    return found
