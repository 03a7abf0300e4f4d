"""``POST /v1/slates?dry_run=true``: the slate a shopper would get, with every candidate's
score, never logged, counting no impression and teaching nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from starlette.testclient import TestClient

from slatebandit.config import Settings
from slatebandit.logging.schema import decisions, slots
from slatebandit.recommender import Recommender, SlateQuery
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog


def _logged(settings: Settings) -> tuple[int, int]:
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        found = (
            conn.execute(select(func.count()).select_from(decisions)).scalar_one(),
            conn.execute(select(func.count()).select_from(slots)).scalar_one(),
        )
    engine.dispose()
    return found


def test_a_dry_run_answers_the_slate_and_every_candidate_and_logs_nothing(
    client: TestClient, settings: Settings
) -> None:
    client.post("/v1/events", json={"user_id": "ann", "item_id": "sku-0000007", "type": "view"})
    before = _logged(settings)
    query = {"user_id": "ann", "k": 5, "context": {"page": "home"}}
    body = client.post("/v1/slates?dry_run=true&explain=true", json=query).json()
    assert body["dry_run"] is True and body["event_id"] is None and body["logged"] == "none"
    assert len(body["items"]) == 5
    for item in body["items"]:
        assert 0 < item["propensity"] <= 1
        assert item["kind"] in ("exploit", "explore", "diverse")
        assert item["reason"] and item["explanation"]["features"]
    scores = [c["score"] for c in body["candidates"]]
    assert scores == sorted(scores, reverse=True) and len(scores) >= 5
    listed = {c["item_id"]: c for c in body["candidates"]}
    for item in body["items"]:  # each pick is a candidate, with the same score and source
        assert listed[item["item_id"]]["score"] == item["score"]
        assert listed[item["item_id"]]["source"] == item["source"]
    assert _logged(settings) == before
    # A real slate still logs.
    assert client.post("/v1/slates", json=query).json()["logged"] == "database"
    assert _logged(settings)[0] == before[0] + 1


def test_a_dry_run_counts_no_impression_and_remembers_nothing(settings: Settings) -> None:
    async def run() -> None:
        recommender = await Recommender.open(settings)
        await recommender.start()
        try:
            impressions = recommender.store.catalog.impressions.copy()
            for i in range(20):
                await recommender.decide(SlateQuery(f"u{i}", k=6, dry_run=True))
            assert (recommender.store.catalog.impressions == impressions).all()
            assert not recommender.decisions  # nothing a reward could find
            await recommender.decide(SlateQuery("u0", k=6))
            assert recommender.store.catalog.impressions.sum() == impressions.sum() + 6
        finally:
            await recommender.close()

    asyncio.run(run())
    assert _logged(settings) == (1, 6)


@pytest.mark.parametrize(("key", "status"), [("s3rve", 403), ("an4lyst", 200), ("adm1n", 200)])
def test_a_dry_run_needs_the_analyst_scope(
    tmp_path: Path, small_catalog: list, key: str, status: int
) -> None:
    settings = make_settings(tmp_path, api_keys="serve:s3rve,analyst:an4lyst,admin:adm1n")
    seed_catalog(settings.database_url, small_catalog)
    with TestClient(create_app(settings)) as client:
        answer = client.post(
            "/v1/slates?dry_run=true", json={"user_id": "u"}, headers={"x-api-key": key}
        )
        assert answer.status_code == status
        # ...while a storefront's key still gets real slates.
        real = client.post("/v1/slates", json={"user_id": "u"}, headers={"x-api-key": "s3rve"})
        assert real.status_code == 200


def test_dry_run_must_be_a_boolean(client: TestClient) -> None:
    answer = client.post("/v1/slates?dry_run=maybe", json={"user_id": "u"})
    assert answer.status_code == 400 and answer.json()["error"]["field"] == "dry_run"
