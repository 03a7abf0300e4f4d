"""``GET /v1/stats``: the console overview's figures, from the log and the histograms, on
SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from slatebandit.config import Settings
from slatebandit.items import Item
from slatebandit.server import create_app
from tests.conftest import liked, make_settings, seed_catalog


def _traffic(client: TestClient, n: int, k: int) -> tuple[int, int]:
    """``n`` slates; liked items clicked, and every fifth slate's first item bought too."""
    clicks = rewards = 0
    for i in range(n):
        body = client.post("/v1/slates", json={"user_id": f"u{i}", "k": k}).json()
        for item in body["items"]:
            if liked(item["item_id"]):
                reward = {"event_id": body["event_id"], "item_id": item["item_id"]}
                assert client.post("/v1/rewards", json=reward).status_code == 202
                clicks += 1
                rewards += 1
        if i % 5 == 0:
            bought = {
                "event_id": body["event_id"],
                "item_id": body["items"][0]["item_id"],
                "type": "purchase",
            }
            assert client.post("/v1/rewards", json=bought).status_code == 202
            rewards += 1
    return clicks, rewards


def _check(settings: Settings) -> None:
    n, k = 40, 4
    with TestClient(create_app(settings)) as client:
        before = client.get("/v1/stats").json()["latency"].get("/v1/slates", {"count": 0})
        clicks, rewarded = _traffic(client, n, k)
        stats = client.get("/v1/stats", params={"minutes": 10, "step": 10}).json()
        assert stats["step"] == 10 and stats["database"] == "ok"
        buckets = stats["traffic"]
        assert {(b["policy"], b["arm"]) for b in buckets} == {("vw", "")}
        assert sum(b["slates"] for b in buckets) == n
        assert sum(b["shown"] for b in buckets) == n * k
        assert sum(b["clicks"] for b in buckets) == clicks > 0
        assert all(b["start"] % 10 == 0 and b["start"] >= stats["since"] for b in buckets)
        assert sum(r["rewards"] for r in stats["rewards"]) == rewarded
        latency = stats["latency"]["/v1/slates"]
        assert latency["count"] - before["count"] == n
        counts = [count for _, count in latency["buckets"]]
        assert counts == sorted(counts) and counts[-1] <= latency["count"]
        assert stats["items"] == client.get("/healthz").json()["items"]
        assert stats["models"]["serving"] == 0 and stats["learner_lag_seconds"] >= 0


def test_stats_count_what_was_served_on_sqlite(settings: Settings) -> None:
    _check(settings)


@pytest.mark.postgres
def test_stats_count_what_was_served_on_postgresql(
    tmp_path: Path, pg_url: str, small_catalog: list[Item]
) -> None:
    settings = make_settings(tmp_path, db_url=pg_url)
    seed_catalog(pg_url, small_catalog)
    _check(settings)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("minutes=0", "minutes"),
        ("minutes=x", "minutes"),
        ("minutes=²", "minutes"),
        ("minutes=" + "9" * 5000, "minutes"),
        ("minutes=99999", "minutes"),
        ("step=7", "step"),
        ("minutes=1440&step=10", "minutes"),  # 8,640 buckets
    ],
)
def test_bad_windows_name_the_field(client: TestClient, query: str, field: str) -> None:
    answer = client.get(f"/v1/stats?{query}")
    assert answer.status_code == 400 and answer.json()["error"]["field"] == field


def test_a_window_is_read_from_the_log_at_most_every_few_seconds(client: TestClient) -> None:
    """Every open console polls; a worker aggregates a window's slots once per CACHE_SECONDS
    whoever asks, while latency (from the histograms) is always current."""
    client.post("/v1/slates", json={"user_id": "a", "k": 3})
    first = client.get("/v1/stats?minutes=15&step=10").json()
    client.post("/v1/slates", json={"user_id": "b", "k": 3})
    again = client.get("/v1/stats?minutes=15&step=10").json()
    assert again["traffic"] == first["traffic"] and again["since"] == first["since"]
    count = again["latency"]["/v1/slates"]["count"]
    assert count == first["latency"]["/v1/slates"]["count"] + 1
    other = client.get("/v1/stats?minutes=16&step=10").json()  # another window: read now
    assert sum(b["slates"] for b in other["traffic"]) == 2
