"""Shoppers' data: pseudonymised user ids, erasure of one user, and the retention purge."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, update
from starlette.testclient import TestClient

from slatebandit.logging import DecisionPayload, open_engine
from slatebandit.logging.schema import decisions, events, rewards, slots, user_states
from slatebandit.recommender.background import purge_expired
from slatebandit.retrieval.demo import demo_items
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog

ITEMS = list(demo_items(300, seed=5))


def _shop(api: TestClient, user: str) -> dict[str, Any]:
    """A view, a slate and a click on its first item."""
    api.post("/v1/events", json={"user_id": user, "item_id": ITEMS[0].item_id, "type": "view"})
    slate = api.post("/v1/slates", json={"user_id": user, "k": 3}).json()
    clicked = api.post(
        "/v1/rewards", json={"event_id": slate["event_id"], "item_id": slate["items"][0]["item_id"]}
    )
    assert clicked.status_code == 202
    return slate


def _user_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        found = set(conn.execute(select(decisions.c.user_id)).scalars())
        found |= set(conn.execute(select(events.c.user_id)).scalars())
        found |= set(conn.execute(select(user_states.c.user_id)).scalars())
    return found


def test_user_ids_are_pseudonymised_before_storage(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, learner="off", user_id_key="s3cret")
    seed_catalog(settings.database_url, ITEMS)
    with TestClient(create_app(settings)) as api:
        _shop(api, "alice@example.com")
        second = api.post("/v1/slates", json={"user_id": "alice@example.com"}).json()
    engine = open_engine(settings.database_url)
    pseudonym = hmac.new(b"s3cret", b"alice@example.com", hashlib.sha256).hexdigest()[:32]
    assert _user_ids(engine) == {pseudonym}
    with engine.connect() as conn:
        payload = conn.execute(
            select(decisions.c.payload).where(decisions.c.event_id == second["event_id"])
        ).scalar_one()
    # The pseudonym is stable: the second slate knows what alice viewed and clicked.
    assert DecisionPayload.decode(payload).context["u"]
    with engine.connect() as conn:
        for table in (decisions, events, user_states):
            for row in conn.execute(select(table)):
                assert "alice" not in repr(tuple(row))
    engine.dispose()


def test_erasing_a_user_removes_their_data_and_redacts_their_decisions(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, learner="off", api_keys="admin:root", user_id_key="s3cret")
    seed_catalog(settings.database_url, ITEMS)
    engine = open_engine(settings.database_url)
    key = {"x-api-key": "root"}
    # Two workers on one database: one serves alice, the other erases her.
    with (
        TestClient(create_app(settings), headers=key) as shop,
        TestClient(create_app(settings), headers=key) as admin,
    ):
        alice = _shop(shop, "alice")
        _shop(shop, "bob")
        with engine.connect() as conn:
            before = conn.execute(select(func.count()).select_from(rewards)).scalar_one()
        erased = admin.delete("/v1/users/alice")
        assert erased.status_code == 200
        assert erased.json() == {
            "user_id": "alice",
            "events": 1,  # the view (a click is a reward, and updates the state)
            "rewards": 1,
            "decisions": 1,
            "state": True,
        }
        # A reward for one of her decisions, on the worker that still has it cached, finds it
        # erased and writes nothing; on the worker that erased her too.
        for worker in (shop, admin):
            late = worker.post(
                "/v1/rewards",
                json={"event_id": alice["event_id"], "item_id": alice["items"][1]["item_id"]},
            )
            assert late.status_code == 404 and "erased" in late.json()["error"]["message"]
        fresh = shop.post("/v1/slates", json={"user_id": "alice"}).json()
        again = admin.delete("/v1/users/alice").json()  # idempotent; her new slate redacted too
        assert again["events"] == 0 and again["decisions"] == 1
        assert admin.delete("/v1/users/nobody").json()["decisions"] == 0
    bob = hmac.new(b"s3cret", b"bob", hashlib.sha256).hexdigest()[:32]
    with engine.connect() as conn:
        assert _user_ids(engine) == {bob, ""}  # bob untouched; alice's decisions redacted
        assert conn.execute(select(func.count()).select_from(rewards)).scalar_one() == before - 1
        for slate in (alice, fresh):
            event_id = slate["event_id"]
            payload = conn.execute(
                select(decisions.c.payload).where(decisions.c.event_id == event_id)
            ).scalar_one()
            redacted = DecisionPayload.decode(payload)
            assert redacted.context["u"] == [] and redacted.context["p"] == []
            assert set(redacted.context["c"]) <= {"hour"}
            # Replay can still recompute its propensities: the picks and candidates stay.
            assert len(redacted.chosen) == len(slate["items"])
    engine.dispose()


def test_retention_purges_old_records_at_start_and_keeps_the_newest_decision(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, learner="off")
    seed_catalog(settings.database_url, ITEMS)
    with TestClient(create_app(settings)) as api:
        for user in ("a", "b", "c"):
            _shop(api, user)
    engine = open_engine(settings.database_url)
    ten_days_ago = time.time() - 10 * 86400
    with engine.begin() as conn:  # everything but one event is ten days old
        conn.execute(update(decisions).values(created_at=ten_days_ago))
        newest_event = conn.execute(select(func.max(events.c.id))).scalar_one()
        conn.execute(
            update(events).where(events.c.id < newest_event).values(created_at=ten_days_ago)
        )
        newest = conn.execute(select(func.max(decisions.c.id))).scalar_one()

    assert purge_expired(engine, settings) is None  # retention off: nothing purged
    kept = make_settings(tmp_path, learner="off", retention_days=30)
    assert purge_expired(engine, kept).decisions == 0  # type: ignore[union-attr]

    week = make_settings(tmp_path, learner="off", retention_days=7)
    with TestClient(create_app(week)) as api:  # the purge runs at start
        with engine.connect() as conn:
            left = conn.execute(select(decisions.c.id)).scalars().all()
            assert left == [newest]  # the newest stays, so SQLite cannot reuse its id
            assert conn.execute(select(func.count()).select_from(slots)).scalar_one() == 3
            assert conn.execute(select(events.c.id)).scalars().all() == [newest_event]
            assert conn.execute(select(func.count()).select_from(rewards)).scalar_one() == 1
        after = api.post("/v1/slates", json={"user_id": "d"}).json()
    with engine.connect() as conn:
        made = conn.execute(
            select(decisions.c.id).where(decisions.c.event_id == after["event_id"])
        ).scalar_one()
    assert made > newest
    engine.dispose()
