"""Hostile input, case by case: each gets a 4xx naming what was wrong and writes nothing.

(Bodies too large, malformed JSON and msgpack, wrong media types and a catalog upload with a
bad row are in ``test_api``: a bad row rejects the whole batch, naming the row and field.)
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx2 as httpx
import msgpack
from sqlalchemy import select

from slatebandit.logging import open_engine
from slatebandit.logging.schema import decisions, events, rewards
from slatebandit.retrieval.demo import demo_items
from tests.conftest import live_server, make_settings, read_response, seed_catalog


def test_hostile_bodies_get_4xx_and_write_nothing(client, settings) -> None:  # type: ignore[no-untyped-def]
    slate = client.post("/v1/slates", json={"user_id": "u", "k": 3}).json()
    engine = open_engine(settings.database_url)

    def counts() -> list[int]:
        with engine.connect() as conn:
            return [len(conn.execute(select(t)).all()) for t in (decisions, rewards, events)]

    before = counts()
    reward = {"event_id": slate["event_id"], "item_id": slate["items"][0]["item_id"]}
    cases = [
        # deep nesting: more than Python's parser can take
        ("/v1/slates", b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "body"),
        ("/v1/slates", b"\x91" * 100_000 + b"\xc0", "application/msgpack", 400, "body"),
        # invalid UTF-8 inside a JSON string
        ("/v1/slates", b'{"user_id": "\xff\xfe"}', "application/json", 400, "body"),
        # NaN and Infinity rewards, as JSON literals and as an overflowing number
        (
            "/v1/rewards",
            json.dumps({**reward, "reward": float("nan")}).encode(),
            "application/json",
            400,
            "reward",
        ),
        (
            "/v1/rewards",
            json.dumps({**reward, "reward": float("inf")}).encode(),
            "application/json",
            400,
            "reward",
        ),
        (
            "/v1/rewards",
            json.dumps(reward)[:-1].encode() + b', "reward": 1e999}',
            "application/json",
            400,
            "reward",
        ),
        (
            "/v1/rewards",
            msgpack.packb({**reward, "reward": float("nan")}),
            "application/msgpack",
            400,
            "reward",
        ),
        # negative and giant k
        ("/v1/slates", b'{"user_id": "u", "k": -1}', "application/json", 400, "k"),
        ("/v1/slates", b'{"user_id": "u", "k": 1' + b"0" * 30 + b"}", "application/json", 400, "k"),
        # an unknown event id
        (
            "/v1/rewards",
            json.dumps({**reward, "event_id": "f" * 32}).encode(),
            "application/json",
            404,
            "event_id",
        ),
        # malformed msgpack: truncated, trailing bytes
        ("/v1/slates", msgpack.packb({"user_id": "u"})[:-1], "application/msgpack", 400, "body"),
        (
            "/v1/slates",
            msgpack.packb({"user_id": "u"}) + b"\x00",
            "application/msgpack",
            400,
            "body",
        ),
        # a map whose key is bytes, not a string: no user_id
        ("/v1/slates", msgpack.packb({b"user_id": "u"}), "application/msgpack", 400, "user_id"),
    ]
    for path, raw, media, status, field in cases:
        response = client.post(path, content=raw, headers={"content-type": media})
        assert response.status_code == status, (path, raw[:40], response.text)
        assert response.json()["error"]["field"] == field, (path, raw[:40], response.text)
    assert counts() == before

    # A duplicate reward is stored once; a conflicting one (same event, item and type, another
    # value) too: the first value stands, and the answer says it was a duplicate.
    first = client.post("/v1/rewards", json={**reward, "reward": 1.0})
    again = client.post("/v1/rewards", json={**reward, "reward": 1.0})
    conflicting = client.post("/v1/rewards", json={**reward, "reward": -5.0})
    assert first.json()["duplicate"] is False
    assert again.json()["duplicate"] is True and conflicting.json()["duplicate"] is True
    with engine.connect() as conn:
        assert conn.execute(select(rewards.c.reward)).scalars().all() == [1.0]
    engine.dispose()


def test_a_slow_client_times_out_without_holding_up_others(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, learner="off", body_timeout_seconds=1)
    seed_catalog(settings.database_url, list(demo_items(300, seed=3)))
    with live_server(settings) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as slow:
            slow.sendall(
                b"POST /v1/slates HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n" + b'{"user_id": '
            )  # ... and never the rest
            served = httpx.post(base + "/v1/slates", json={"user_id": "fast"}, timeout=10)
            assert served.status_code == 200  # others are served meanwhile
            head, body = read_response(slow)  # the server answers once the body's time is up
        assert head.startswith(b"http/1.1 408")
        assert json.loads(body)["error"]["field"] == "body"
    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        assert len(conn.execute(select(decisions)).all()) == 1  # the fast one only
    engine.dispose()
