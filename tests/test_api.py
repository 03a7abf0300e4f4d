"""The HTTP contract, in process (TestClient runs the lifespan), on SQLite."""

from __future__ import annotations

import msgpack
import pytest
from sqlalchemy import create_engine, select
from starlette.testclient import TestClient

from slatebandit.bandit import FEATURE_SPEC_VERSION
from slatebandit.config import Settings
from slatebandit.logging import DecisionPayload
from slatebandit.logging.schema import decisions, events, items, rewards, slots
from slatebandit.server import create_app


def _slate(client: TestClient, **body: object) -> dict:  # type: ignore[type-arg]
    response = client.post("/v1/slates", json={"user_id": "alice", **body})
    assert response.status_code == 200, response.text
    return response.json()


def _count(settings: Settings, table) -> int:  # type: ignore[no-untyped-def]
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        n = len(conn.execute(select(table)).all())
    engine.dispose()
    return n


def test_slate_shape_and_logged_record_read_back_through_a_fresh_connection(
    client, settings
) -> None:  # type: ignore[no-untyped-def]
    body = _slate(client, k=10, context={"device": "mobile", "page": "home"})
    assert body["policy"] == "vw" and body["model_version"] == 0
    shown = body["items"]
    assert [s["slot"] for s in shown] == list(range(10))
    assert len({s["item_id"] for s in shown}) == 10
    assert {s["kind"] for s in shown} <= {"exploit", "explore", "diverse"}
    assert all(0 < s["propensity"] <= 1 for s in shown)
    assert [s["kind"] for s in shown][4] == "explore" and shown[2]["kind"] == "diverse"

    engine = create_engine(settings.database_url)  # a new connection: the 200 meant committed
    with engine.connect() as conn:
        row = conn.execute(select(decisions).where(decisions.c.event_id == body["event_id"])).one()
        logged = conn.execute(
            select(items.c.item_id, slots.c.propensity, slots.c.kind, slots.c.source)
            .join(items, items.c.key == slots.c.item_key)
            .where(slots.c.decision_id == row.id)
            .order_by(slots.c.slot)
        ).all()
    engine.dispose()
    assert row.user_id == "alice" and row.policy == "vw"
    assert [(r.item_id, r.propensity, r.kind, r.source) for r in logged] == [
        (s["item_id"], s["propensity"], s["kind"], s["source"]) for s in shown
    ]
    payload = DecisionPayload.decode(row.payload)
    assert payload.context["c"]["device"] == "mobile"
    assert len(payload.candidate_revs) == len(payload.candidate_flags) <= 200
    assert payload.scores is None  # not logged: they follow from the model and the features
    assert len(payload.chosen) == 10 and payload.layout == "eedexeedex"
    assert payload.feature_spec == FEATURE_SPEC_VERSION


def test_msgpack_in_and_out(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post(
        "/v1/slates",
        content=msgpack.packb({"user_id": "bob", "k": 3}),
        headers={"content-type": "application/msgpack", "accept": "application/msgpack"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/msgpack"
    assert len(msgpack.unpackb(response.content)["items"]) == 3


def test_reward_is_stored_once_and_unknown_event_is_404(client, settings) -> None:  # type: ignore[no-untyped-def]
    body = _slate(client, k=3)
    reward = {"event_id": body["event_id"], "item_id": body["items"][1]["item_id"], "reward": 1.0}
    first = client.post("/v1/rewards", json=reward)
    second = client.post("/v1/rewards", json=reward)
    assert (first.status_code, second.status_code) == (202, 202)
    assert (first.json()["duplicate"], second.json()["duplicate"]) == (False, True)
    assert _count(settings, rewards) == 1

    missing = client.post("/v1/rewards", json={**reward, "event_id": "0" * 32})
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "event_id"
    not_shown = client.post("/v1/rewards", json={**reward, "item_id": "sku-nope"})
    assert not_shown.status_code == 400 and not_shown.json()["error"]["field"] == "item_id"
    assert _count(settings, rewards) == 1


def test_events_shape_the_next_slate(client) -> None:  # type: ignore[no-untyped-def]
    cold = _slate(client, user_id="carol", k=10)
    assert {s["source"] for s in cold["items"]} <= {"popular", "fresh"}
    clicked = "sku-0000005"
    response = client.post(
        "/v1/events", json={"user_id": "carol", "item_id": clicked, "type": "click"}
    )
    assert response.status_code == 202
    warm = _slate(client, user_id="carol", k=10)
    sources = {s["source"] for s in warm["items"]}
    assert "similar" in sources  # with one click, session neighbours are the same items
    assert clicked not in {s["item_id"] for s in warm["items"]}  # the item itself is not re-shown


def test_purchased_and_excluded_items_are_filtered(client) -> None:  # type: ignore[no-untyped-def]
    first = _slate(client, user_id="dave", k=10)
    bought = first["items"][0]["item_id"]
    client.post("/v1/events", json={"user_id": "dave", "item_id": bought, "type": "purchase"})
    excluded = [s["item_id"] for s in first["items"][1:4]]
    for _ in range(20):
        shown = {
            s["item_id"] for s in _slate(client, user_id="dave", k=10, exclude=excluded)["items"]
        }
        assert bought not in shown and not shown & set(excluded)


def test_new_item_appears_at_once_and_deleted_item_never_again(client) -> None:  # type: ignore[no-untyped-def]
    new = {
        "item_id": "brand-new",
        "title": "Plush Dragon",
        "category": "kids/toys/plush",
        "brand": "Nova",
        "price": 19.0,
    }
    assert client.put("/v1/items", json=[new]).status_code == 200
    # The very next slate can show it: it is fresh (explore slots) and a neighbour of its category.
    body = _slate(client, user_id="erin", k=10, session_items=["brand-new"])
    similar = {s["item_id"] for s in body["items"] if s["source"] in ("similar", "session")}
    assert similar  # retrieval found neighbours of the new item at once
    seen_new = any(
        "brand-new" in {s["item_id"] for s in _slate(client, user_id=f"u{i}", k=10)["items"]}
        for i in range(30)
    )
    assert seen_new

    assert client.delete("/v1/items/brand-new").status_code == 200
    for i in range(50):
        assert "brand-new" not in {
            s["item_id"] for s in _slate(client, user_id=f"v{i}", k=10)["items"]
        }
    assert client.delete("/v1/items/brand-new").status_code == 404

    unavailable = {**new, "item_id": "sold-out", "available": False}
    client.put("/v1/items", json=[unavailable])
    for i in range(30):
        assert "sold-out" not in {
            s["item_id"] for s in _slate(client, user_id=f"w{i}", k=10)["items"]
        }


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/slates", {"k": 3}, 400, "user_id"),
        ("/v1/slates", {"user_id": "a", "k": 0}, 400, "k"),
        ("/v1/slates", {"user_id": "a", "k": 51}, 400, "k"),
        ("/v1/slates", {"user_id": "a", "k": "3"}, 400, "k"),
        ("/v1/slates", {"user_id": "a", "colour": "red"}, 400, "colour"),
        ("/v1/slates", {"user_id": "a", "context": {"d": [1]}}, 400, "context.d.str"),
        ("/v1/slates", {"user_id": "a", "exclude": "x"}, 400, "exclude"),
        ("/v1/slates", ["not", "an", "object"], 400, None),
        ("/v1/rewards", {"event_id": "x", "item_id": "a"}, 400, "event_id"),
        ("/v1/rewards", {"event_id": "0" * 32, "item_id": "a", "reward": "1"}, 400, "reward"),
        ("/v1/events", {"user_id": "a", "item_id": "sku-0000001", "type": "hover"}, 400, "type"),
        ("/v1/events", {"user_id": "a", "item_id": "no-such-item", "type": "view"}, 404, "item_id"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field_and_writes_nothing(
    client, settings, path, body, status, field
) -> None:  # type: ignore[no-untyped-def]
    before = [_count(settings, t) for t in (decisions, rewards, events)]
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field"}
    if field is not None:
        assert error["field"] is not None and error["field"].startswith(field.split(".")[0])
    assert [_count(settings, t) for t in (decisions, rewards, events)] == before


def test_malformed_oversized_and_wrong_type_bodies(client, settings) -> None:  # type: ignore[no-untyped-def]
    bad_json = client.post(
        "/v1/slates", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400 and bad_json.json()["error"]["field"] == "body"
    bad_pack = client.post(
        "/v1/slates", content=b"\xc1", headers={"content-type": "application/msgpack"}
    )
    assert bad_pack.status_code == 400
    huge = client.post(
        "/v1/slates",
        content=b"x" * (settings.max_body_bytes + 1),
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413
    form = client.post(
        "/v1/slates", content=b"a=b", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert form.status_code == 415
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/slates").status_code == 405
    bad_item = client.put("/v1/items", json=[{"item_id": "ok"}, {"item_id": "x", "price": -1}])
    assert bad_item.status_code == 400 and bad_item.json()["error"]["field"] == "items[1].price"
    assert _count(settings, decisions) == 0 and _count(settings, items) == 600  # nothing written


def test_api_keys_and_scopes(tmp_path, small_catalog) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings, seed_catalog

    settings = make_settings(tmp_path, api_keys="serve:s3rve,catalog:c4t,admin:r00t")
    seed_catalog(settings.database_url, small_catalog[:50])
    with TestClient(create_app(settings)) as client:
        body = {"user_id": "a", "k": 2}
        assert client.post("/v1/slates", json=body).status_code == 401
        assert (
            client.post(
                "/v1/slates", json=body, headers={"authorization": "Bearer nope"}
            ).status_code
            == 401
        )
        assert (
            client.post(
                "/v1/slates", json=body, headers={"authorization": "Bearer s3rve"}
            ).status_code
            == 200
        )
        assert (
            client.post("/v1/slates", json=body, headers={"x-api-key": "r00t"}).status_code == 200
        )
        item = [{"item_id": "n1"}]
        assert client.put("/v1/items", json=item, headers={"x-api-key": "s3rve"}).status_code == 403
        assert client.put("/v1/items", json=item, headers={"x-api-key": "c4t"}).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_openapi_describes_every_route(client) -> None:  # type: ignore[no-untyped-def]
    doc = client.get("/openapi.json").json()
    routes = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes == {
        ("/v1/slates", "post"),
        ("/v1/rewards", "post"),
        ("/v1/events", "post"),
        ("/v1/items", "put"),
        ("/v1/items", "get"),
        ("/v1/items/{item_id}", "delete"),
        ("/v1/rules", "get"),
        ("/v1/rules/{name}", "put"),
        ("/v1/rules/{name}", "delete"),
        ("/v1/items/{item_id}", "get"),
        ("/v1/stats", "get"),
        ("/v1/metrics/summary", "get"),
        ("/metrics", "get"),
        ("/v1/access", "get"),
        ("/v1/users/{user_id}", "delete"),
        ("/v1/models", "get"),
        ("/v1/models/{version}/promote", "post"),
        ("/v1/models/rollback", "post"),
        ("/v1/experiments", "get"),
        ("/v1/experiments/{name}", "put"),
        ("/v1/experiments/{name}", "get"),
        ("/v1/experiments/{name}", "delete"),
        ("/v1/experiments/{name}/report", "get"),
        ("/v1/evaluations", "post"),
        ("/v1/evaluations", "get"),
        ("/v1/evaluations/{evaluation_id}", "get"),
        ("/healthz", "get"),
        ("/openapi.json", "get"),
    }
    assert "SlateRequest" in doc["components"]["schemas"]


def test_reward_value_comes_from_the_table_when_omitted(tmp_path, small_catalog) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings, seed_catalog

    settings = make_settings(tmp_path, reward_table="click:1,purchase:5")
    seed_catalog(settings.database_url, small_catalog[:50])
    with TestClient(create_app(settings)) as client:
        body = _slate(client, k=2)
        shown = {"event_id": body["event_id"], "item_id": body["items"][0]["item_id"]}
        bought = client.post("/v1/rewards", json={**shown, "type": "purchase"})
        assert bought.status_code == 202 and bought.json()["reward"] == 5.0
        explicit = client.post("/v1/rewards", json={**shown, "type": "click", "reward": 0.5})
        assert explicit.json()["reward"] == 0.5
        unknown = client.post("/v1/rewards", json={**shown, "type": "wishlist"})
        assert unknown.status_code == 400 and unknown.json()["error"]["field"] == "type"
