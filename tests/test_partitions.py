"""The log's daily partitions on PostgreSQL (``logging.partitions``) and the compact payload.

On PostgreSQL a decision's id is its day and a sequence number, so it lands in its day's
partition; retention drops whole days; queries bounded by id or by ``made_since`` read only
the partitions they need. Payloads are compressed and their shifts sparse, exactly.
"""

from __future__ import annotations

import re
import time

import msgpack
import numpy as np
import pytest
from sqlalchemy import insert, inspect, select, text

from slatebandit.logging import (
    DecisionPayload,
    DecisionRecord,
    ShownSlot,
    insert_event,
    open_engine,
    shown_decision,
)
from slatebandit.logging.partitions import (
    DAY,
    LEGACY_END,
    PARTITIONED,
    day_of,
    ensure_days,
    event_time,
    first_id,
    made_since,
    new_event_id,
    partition_names,
    sequence_numbers,
)
from slatebandit.logging.privacy import purge_before
from slatebandit.logging.records import ZSTD_MAGIC
from slatebandit.logging.schema import decisions, events, metadata, slots

SHOWN = (
    ShownSlot(0, 1, 0.5, "exploit", "similar", 0.25),
    ShownSlot(1, 2, 0.1, "explore", "fresh", 0.0),
)


def _record(created_at: float, user: str = "u") -> DecisionRecord:
    return DecisionRecord(new_event_id(created_at), created_at, user, "vw", 0, b"\x80", SHOWN)


def test_event_ids_carry_the_second_they_were_made() -> None:
    now = time.time()
    event_id = new_event_id(now)
    assert re.fullmatch(r"[0-9a-f]{32}", event_id)
    assert event_time(event_id) == float(int(now))
    assert new_event_id(now) != event_id  # 96 random bits after the time
    assert event_time("0" * 32) is None  # before 2024: an id from before they carried time
    assert event_time(f"{int(now) + 10 * DAY:08x}" + "0" * 24) is None  # from the future
    assert event_time("not hex at all, not hex at all!!") is None


def test_sequence_numbers_and_floors() -> None:
    day = day_of(time.time())
    ids = np.array([5, first_id(day) + 5], dtype=np.int64)
    assert sequence_numbers(ids).tolist() == [5, 5]
    assert first_id(day) >= LEGACY_END
    assert first_id(day + 1) - first_id(day) == LEGACY_END  # a day holds 2**40 ids


def test_a_shift_is_logged_sparse_or_dense_and_read_back_exactly() -> None:
    def payload(shift: np.ndarray) -> DecisionPayload:
        n = len(shift)
        return DecisionPayload(
            context={"c": {}},
            candidate_revs=np.arange(n, dtype=np.uint32),
            candidate_flags=np.ones(n, dtype=np.uint8),
            candidate_dynamic=np.zeros(n, dtype=np.uint8),
            scores=None,
            layout="ee",
            exploration={"kind": "greedy"},
            chosen=np.array([0, 1], dtype=np.uint16),
            feature_spec=1,
            shift=shift,
            shown_sources=np.array([0, 3], dtype=np.uint8),
            shown_scores=np.array([0.5, 0.25], dtype=np.float32),
        )

    rng = np.random.default_rng(3)
    few = np.zeros(200, dtype=np.float32)
    few[[3, 70, 199]] = rng.normal(size=3).astype(np.float32)
    many = rng.normal(size=200).astype(np.float32)
    for shift, key in ((few, "shi"), (many, "sh")):
        data = payload(shift).encode()
        assert data.startswith(ZSTD_MAGIC)
        assert key in DecisionPayload.fields(data)
        decoded = DecisionPayload.decode(data)
        assert decoded.shift is not None and np.array_equal(decoded.shift, shift)
        assert decoded.shown_sources.tolist() == [0, 3]  # type: ignore[union-attr]
        assert decoded.shown_scores.tolist() == [0.5, 0.25]  # type: ignore[union-attr]
    assert len(payload(few).encode()) < len(payload(many).encode())


def test_a_payload_from_before_compression_still_reads() -> None:
    old = msgpack.packb(
        {
            "v": 2,
            "ctx": {"c": {"device": "mobile"}},
            "rev": np.arange(3, dtype="<u4").tobytes(),
            "flg": b"\x01\x01\x01",
            "dyn": b"\x00\x00\x00",
            "sc": np.array([0.5, 0.25, 0.0], dtype="<f2").tobytes(),
            "lay": "e",
            "exp": {"kind": "greedy"},
            "fs": 1,
            "ch": np.array([2], dtype="<u2").tobytes(),
            "sh": np.array([0.0, 1.0, 0.0], dtype="<f4").tobytes(),
        },
        use_bin_type=True,
    )
    decoded = DecisionPayload.decode(old)
    assert decoded.scores.tolist() == [0.5, 0.25, 0.0]  # type: ignore[union-attr]
    assert decoded.shift.tolist() == [0.0, 1.0, 0.0]  # type: ignore[union-attr]
    assert decoded.context == {"c": {"device": "mobile"}}


@pytest.mark.postgres
def test_the_partitioned_tables_have_the_schema_columns(pg_url: str) -> None:
    """The DDL of the partitioned tables and ``logging.schema`` name the same columns, with
    the same nullability but for the slot's kind, source and score (NULL on PostgreSQL)."""
    engine = open_engine(pg_url)
    inspector = inspect(engine)
    nullable_here = {("slots", "kind"), ("slots", "source"), ("slots", "score")}
    for table in PARTITIONED:
        found = {c["name"]: c["nullable"] for c in inspector.get_columns(table)}
        declared = {c.name: c.nullable for c in metadata.tables[table].columns}
        assert set(found) == set(declared), table
        for name, nullable in declared.items():
            assert found[name] == (nullable or (table, name) in nullable_here), (table, name)
    engine.dispose()


@pytest.mark.postgres
def test_decisions_go_into_their_days_partition_and_retention_drops_whole_days(
    pg_url: str,
) -> None:
    engine = open_engine(pg_url)
    now = time.time()
    today = day_of(now)
    with engine.begin() as conn:
        ensure_days(conn, [today - 5])
        (fresh,) = DecisionRecord.write_many(conn, [_record(now)])
        conn.execute(  # a decision that went in five days ago, in its day's partition
            insert(decisions).values(
                id=first_id(today - 5) + 1,
                event_id=new_event_id(now - 5 * DAY),
                created_at=now - 5 * DAY,
                user_id="old",
                policy="vw",
                model_version=0,
                payload=b"\x80",
            )
        )
        conn.execute(
            insert(slots).values(
                decision_id=first_id(today - 5) + 1, slot=0, item_key=1, propensity=1.0
            )
        )
        assert insert_event(
            conn, user_id="u", item_key=1, type="view", created_at=now, ref=new_event_id(now)
        )
        names = partition_names(conn)
    assert first_id(today) <= fresh.decision_id < first_id(today + 1)
    assert {f"{table}_p" for table in PARTITIONED} <= {name[:-8] for name in names}
    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT tableoid::regclass::text FROM decisions WHERE id = :id"),
            {"id": fresh.decision_id},
        ).scalar_one()
        event_id = conn.execute(select(events.c.id)).scalar_one()
    assert stored.endswith(time.strftime("_p%Y%m%d", time.gmtime(now)))
    assert first_id(today) <= event_id < first_id(today + 1)

    with engine.begin() as conn:
        purged = purge_before(conn, now - 2 * DAY)
        left = conn.execute(select(decisions.c.user_id)).scalars().all()
        remaining = partition_names(conn)
    assert sorted(purged.partitions) == sorted(
        f"{table}_p{time.strftime('%Y%m%d', time.gmtime((today - 5) * DAY))}"
        for table in PARTITIONED
    )
    assert purged.decisions == 0  # nothing was deleted row by row: the day went whole
    assert left == ["u"] and not set(purged.partitions) & set(remaining)
    engine.dispose()


@pytest.mark.postgres
def test_an_event_ref_is_stored_once_without_a_unique_index(pg_url: str) -> None:
    engine = open_engine(pg_url)
    ref = new_event_id()
    with engine.begin() as conn:
        assert insert_event(conn, user_id="u", item_key=1, type="view", created_at=1.0, ref=ref)
        assert not insert_event(conn, user_id="u", item_key=1, type="view", created_at=1.0, ref=ref)
        assert insert_event(conn, user_id="u", item_key=1, type="view", created_at=1.0, ref=None)
        assert conn.execute(text("SELECT count(*) FROM events")).scalar_one() == 2
    engine.dispose()


@pytest.mark.postgres
def test_bounded_queries_read_only_their_partitions(pg_url: str) -> None:
    """A reward's lookup by event id and a replay window from a time on are pruned to the
    partitions from that day on; the old day is not in their plans."""
    engine = open_engine(pg_url)
    now = time.time()
    today = day_of(now)
    old_day = time.strftime("%Y%m%d", time.gmtime((today - 4) * DAY))
    with engine.begin() as conn:
        ensure_days(conn, [today - 4])
        record = _record(now)
        (fresh,) = DecisionRecord.write_many(conn, [record])
        found = shown_decision(conn, record.event_id)
    assert found is not None and found.decision_id == fresh.decision_id
    assert found.item_keys == (1, 2)
    queries = {
        "event id": select(decisions.c.id).where(
            decisions.c.event_id == "x", made_since(decisions.c.id, now)
        ),
        "since": select(decisions.c.id).where(made_since(decisions.c.id, now - 60)),
        "after an id": select(slots.c.slot).where(slots.c.decision_id > first_id(today)),
    }
    with engine.connect() as conn:
        for name, query in queries.items():
            sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
            plan = "\n".join(conn.exec_driver_sql(f"EXPLAIN {sql}").scalars())
            assert f"_p{old_day}" not in plan, name
            assert "_p" in plan, name  # it reads some daily partition, just not the old one
        everything = "\n".join(conn.exec_driver_sql("EXPLAIN SELECT id FROM decisions").scalars())
    assert f"decisions_p{old_day}" in everything  # unbounded, it would read it
    engine.dispose()
