"""A database made by schema version 2 is brought to today's version in place (SQLite,
PostgreSQL): version 3 added columns and tables, version 4 the Personalizer tables, version 5
the spool's progress and event refs, version 6 canaries and the verdicts' stage and outcome,
version 7 merchandising rules, each decision's placement and each reward's money value,
version 8 the machine registry and, on PostgreSQL, daily partitions of the log tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, insert, inspect, text

from slatebandit.logging import open_engine
from slatebandit.logging.partitions import LEGACY_END
from slatebandit.logging.schema import SCHEMA_VERSION, metadata, schema_info

_SINCE_V6 = (
    "DROP TABLE IF EXISTS machines",
    "DROP TABLE rule_versions",
    "ALTER TABLE decisions DROP COLUMN placement",
    "ALTER TABLE rewards DROP COLUMN value",
    "ALTER TABLE spool_orphans DROP COLUMN value",
)
_SINCE_V2 = (
    *_SINCE_V6,
    "DROP INDEX ix_decisions_experiment",
    "DROP INDEX ix_decisions_model_version",
    "ALTER TABLE decisions DROP COLUMN experiment",
    "ALTER TABLE decisions DROP COLUMN arm",
    "ALTER TABLE model_versions DROP COLUMN compared",
    "ALTER TABLE model_versions DROP COLUMN agreed",
    "DROP TABLE model_gates",
    "DROP TABLE experiments",
    "DROP TABLE pz_rewards",
    "DROP TABLE pz_events",
    "DROP TABLE pz_models",
    "DROP TABLE pz_loops",
    "DROP TABLE pz_evaluations",
    "DROP TABLE spool_progress",
    "DROP TABLE canaries",
    "DROP INDEX ux_events_ref",
    "ALTER TABLE events DROP COLUMN ref",
    "UPDATE schema_info SET value = 2 WHERE name = 'version'",
)


def _version_7(url: str) -> Engine:
    """A database as schema version 7 made it: one plain table each, on PostgreSQL too."""
    engine = create_engine(url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(schema_info).values(name="version", value=7))
    return engine


def _check_migrates(url: str) -> None:
    engine = _version_7(url)  # version 7's schema...
    with engine.begin() as conn:  # ...taken back to version 2
        conn.execute(
            text(
                "INSERT INTO decisions (event_id, created_at, user_id, policy, model_version, "
                "payload) VALUES ('e1', 1.0, 'u', 'vw', 0, :p)"
            ),
            {"p": b"x"},
        )
        for statement in _SINCE_V2:
            conn.execute(text(statement))
    engine.dispose()

    engine = open_engine(url)
    with engine.connect() as conn:
        version = conn.execute(
            text("SELECT value FROM schema_info WHERE name = 'version'")
        ).scalar()
        row = conn.execute(text("SELECT event_id, experiment, arm FROM decisions")).one()
        placement = conn.execute(text("SELECT placement FROM decisions")).scalar()
    columns = {c["name"] for c in inspect(engine).get_columns("model_versions")}
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert version == SCHEMA_VERSION == 8
    assert tuple(row) == ("e1", None, None)  # old decisions belong to no experiment
    assert placement == "home"  # and were home slates
    assert "value" in {c["name"] for c in inspect(engine).get_columns("rewards")}
    assert "rule_versions" in tables
    assert {"compared", "agreed"} <= columns and {"experiments", "model_gates"} <= tables
    assert {"pz_loops", "pz_events", "pz_rewards", "pz_models", "pz_evaluations"} <= tables
    assert "spool_progress" in tables and "canaries" in tables
    assert "ref" in {c["name"] for c in inspect(engine).get_columns("events")}
    assert {"stage", "outcome"} <= {c["name"] for c in inspect(engine).get_columns("model_gates")}


def _check_migrates_from_5(url: str) -> None:
    """Version 5 had model_gates without stage and outcome: its verdicts become the guard's."""
    engine = _version_7(url)
    with engine.begin() as conn:
        for statement in _SINCE_V6:
            conn.execute(text(statement))
        conn.execute(text("DROP TABLE canaries"))
        conn.execute(text("DROP INDEX ix_decisions_model_version"))
        conn.execute(text("ALTER TABLE model_gates DROP COLUMN stage"))
        conn.execute(text("ALTER TABLE model_gates DROP COLUMN outcome"))
        conn.execute(text("UPDATE schema_info SET value = 5 WHERE name = 'version'"))
        conn.execute(
            text(
                "INSERT INTO model_versions (version, vw_args, feature_spec, examples, "
                "learned_through, created_at, model) VALUES (1, '', 1, 0, 0, 1.0, :m)"
            ),
            {"m": b"x"},
        )
        conn.execute(
            text(
                "INSERT INTO model_gates (version, created_at, promoted, reason, details) "
                "VALUES (1, 1.0, true, 'old', '{}')"
            )
        )
    engine.dispose()
    engine = open_engine(url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT stage, outcome FROM model_gates")).one()
        assert conn.execute(text("SELECT count(*) FROM canaries")).scalar() == 0
    indexes = {i["name"] for i in inspect(engine).get_indexes("decisions")}
    engine.dispose()
    assert "ix_decisions_model_version" in indexes
    assert tuple(row) == ("guard", "")


def test_sqlite_database_of_version_5_migrates(tmp_path: Path) -> None:
    _check_migrates_from_5(f"sqlite:///{tmp_path / 'old5.db'}")


def test_sqlite_database_of_version_2_migrates(tmp_path: Path) -> None:
    _check_migrates(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_postgres_database_of_version_2_migrates(pg_url: str) -> None:
    _check_migrates(pg_url)


@pytest.mark.postgres
def test_postgres_database_of_version_5_migrates(pg_url: str) -> None:
    _check_migrates_from_5(pg_url)


@pytest.mark.postgres
def test_postgres_log_becomes_partitioned_keeping_its_rows(pg_url: str) -> None:
    """Version 7's log tables become the legacy partition of today's partitioned tables: old
    rows stay readable, rewards still find them, and new decisions get ids above them."""
    from slatebandit.logging import DecisionRecord, ShownSlot, insert_reward, shown_decision

    engine = _version_7(pg_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO items (item_id, title, category, brand, attributes, "
                "available, deleted, rev, created_at, updated_at) VALUES "
                "('i1', '', '', '', '{}', true, false, 1, 1.0, 1.0)"
            )
        )
        old = conn.execute(
            text(
                "INSERT INTO decisions (event_id, created_at, user_id, policy, model_version, "
                "payload) VALUES ('e1', 1.0, 'u', 'vw', 0, :p) RETURNING id"
            ),
            {"p": b"\x80"},  # an empty msgpack map,
        ).scalar_one()
        conn.execute(
            text("INSERT INTO slots VALUES (:d, 0, 1, 0.5, 'exploit', 'ann', 0.1)"), {"d": old}
        )
    engine.dispose()

    engine = open_engine(pg_url)
    shown = (ShownSlot(0, 1, 0.25, "exploit", "ann", 0.2),)
    record = DecisionRecord("f" * 32, 2.0, "u", "vw", 0, b"y", shown)
    with engine.begin() as conn:
        (new,) = DecisionRecord.write_many(conn, [record])
        assert insert_reward(
            conn, decision_id=old, item_key=1, type="click", reward=1.0, created_at=3.0
        )
        assert not insert_reward(
            conn, decision_id=old, item_key=1, type="click", reward=1.0, created_at=3.0
        )  # still once per decision, item and type
        found = shown_decision(conn, "e1")
        kinds = dict(
            conn.execute(
                text(
                    "SELECT c.relname, c.relkind FROM pg_class c WHERE c.relname IN "
                    "('decisions', 'decisions_legacy', 'slots', 'slots_legacy')"
                )
            ).all()
        )
    engine.dispose()
    assert found is not None and found.decision_id == old and found.item_keys == (1,)
    assert old < LEGACY_END <= new.decision_id
    assert kinds == {"decisions": "p", "slots": "p", "decisions_legacy": "r", "slots_legacy": "r"}
