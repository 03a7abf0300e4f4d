"""The same records on PostgreSQL: the schema, group commit, idempotent rewards, catalog feed."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, select
from starlette.testclient import TestClient

from slatebandit.logging import DecisionPayload
from slatebandit.logging.schema import decisions, rewards, slots
from slatebandit.retrieval.demo import demo_items
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog

pytestmark = pytest.mark.postgres


def test_serving_loop_on_postgres(tmp_path, pg_url) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, db_url=pg_url)
    seed_catalog(pg_url, list(demo_items(300, seed=5)))
    with TestClient(create_app(settings)) as client:
        body = client.post("/v1/slates", json={"user_id": "pat", "k": 5}).json()
        reward = {"event_id": body["event_id"], "item_id": body["items"][0]["item_id"]}
        assert [client.post("/v1/rewards", json=reward).json()["duplicate"] for _ in range(2)] == [
            False,
            True,
        ]
        assert (
            client.post(
                "/v1/events", json={"user_id": "pat", "item_id": "sku-0000003", "type": "click"}
            ).status_code
            == 202
        )
        assert (
            client.put(
                "/v1/items", json=[{"item_id": "pg-new", "category": "home/decor"}]
            ).status_code
            == 200
        )
        warm = client.post(
            "/v1/slates", json={"user_id": "pat", "k": 5, "session_items": ["pg-new"]}
        ).json()
        assert {s["source"] for s in warm["items"]} & {"similar", "session"}

    engine = create_engine(pg_url)
    with engine.connect() as conn:
        row = conn.execute(select(decisions).where(decisions.c.event_id == body["event_id"])).one()
        assert len(conn.execute(select(slots).where(slots.c.decision_id == row.id)).all()) == 5
        assert len(conn.execute(select(rewards)).all()) == 1
    engine.dispose()
    assert len(DecisionPayload.decode(row.payload).chosen) == 5


def test_catalog_changes_from_another_process_arrive_by_the_feed(tmp_path, pg_url) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from slatebandit.items import Item
    from slatebandit.logging import open_engine
    from slatebandit.retrieval import ItemStore

    seed_catalog(pg_url, list(demo_items(100, seed=6)))
    engine = open_engine(pg_url)
    store = ItemStore.open(engine, None)
    seed_catalog(pg_url, [Item(item_id="elsewhere", category="men/suits")])  # another writer
    assert store.catalog.live_key("elsewhere") is None
    assert asyncio.run(store.sync(engine)) >= 1
    key = store.catalog.live_key("elsewhere")
    assert key is not None and store.index.contains(key)
    engine.dispose()
