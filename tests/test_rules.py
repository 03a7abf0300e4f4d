"""Merchandising rules against a real app (real VW, hnswlib, SQLite): the API, what each rule
does to slates, and replay of rule-shaped logs, exact to the logged propensities."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from slatebandit.bandit import Exploration
from slatebandit.config import Settings
from slatebandit.items import Item
from slatebandit.logging import open_engine
from slatebandit.policies import Popular, Random
from slatebandit.policies.learner import Learner
from slatebandit.replay.log import Window, read_chunks
from slatebandit.replay.targets import PolicyTarget, Target, parse_target
from slatebandit.retrieval.demo import demo_items
from slatebandit.server import create_app
from tests.conftest import liked, make_settings, seed_catalog

ITEMS = list(demo_items(300, seed=5))


def _ids(items: list[Item], **where: str) -> list[str]:
    return [i.item_id for i in items if all(getattr(i, k) == v for k, v in where.items())]


def _slate(client: TestClient, user: str, k: int = 10, **body: object) -> dict:  # type: ignore[type-arg]
    answer = client.post("/v1/slates", json={"user_id": user, "k": k, **body})
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


@pytest.fixture
def rules_client(tmp_path: Path) -> TestClient:
    settings = make_settings(tmp_path, learner="off")
    seed_catalog(settings.database_url, ITEMS)
    with TestClient(create_app(settings)) as client:
        yield client  # type: ignore[misc]


def test_rules_are_stored_versioned_listed_and_ended(rules_client: TestClient) -> None:
    client = rules_client
    body = {"action": "boost", "filter": {"brand": [ITEMS[0].brand]}, "weight": 0.5}
    first = client.put("/v1/rules/brand-week", json=body)
    assert first.status_code == 201 and first.json()["version"] == 1
    again = client.put("/v1/rules/brand-week", json={**body, "weight": 0.7})
    assert again.status_code == 200 and again.json()["version"] == 2
    listed = client.get("/v1/rules").json()["rules"]
    assert [(r["name"], r["version"], r["weight"]) for r in listed] == [("brand-week", 2, 0.7)]
    assert client.delete("/v1/rules/brand-week").json() == {"name": "brand-week", "deleted": True}
    assert client.get("/v1/rules").json() == {"rules": []}
    gone = client.delete("/v1/rules/brand-week")
    assert gone.status_code == 404 and gone.json()["error"]["field"] == "name"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "feature", "items": ["a"]}, "action"),
        ({"action": "block"}, "items"),
        ({"action": "pin", "items": ["a", "b"], "slots": [0]}, "slots"),
        ({"action": "pin", "filter": {"brand": ["x"]}, "slots": [0]}, "filter"),
        ({"action": "pin", "items": ["a"], "slots": [100]}, "slots"),
        ({"action": "boost", "items": ["a"]}, "weight"),
        ({"action": "bury", "items": ["a"], "weight": -1}, "weight"),
        ({"action": "block", "items": ["a"], "weight": 1}, "weight"),
        ({"action": "promote", "items": ["a"], "share": 1.5}, "share"),
        ({"action": "promote", "items": ["a"]}, "share"),
        ({"action": "block", "items": ["a"], "placements": ["checkout"]}, "placements.0"),
        ({"action": "block", "items": ["a"], "start": 10, "end": 5}, "end"),
        ({"action": "block", "items": ["a"], "start": "2026-12-01T00:00:00"}, "start"),
        ({"action": "block", "items": ["a"], "colour": "red"}, "colour"),
    ],
)
def test_bad_rules_are_a_400_naming_the_field_and_store_nothing(
    rules_client: TestClient,
    body: dict,
    field: str,  # type: ignore[type-arg]
) -> None:
    answer = rules_client.put("/v1/rules/r1", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["field"] == field
    assert rules_client.get("/v1/rules").json() == {"rules": []}


def test_a_bad_rule_name_is_a_400(rules_client: TestClient) -> None:
    answer = rules_client.put("/v1/rules/a b", json={"action": "block", "items": ["x"]})
    assert answer.status_code == 400 and answer.json()["error"]["field"] == "name"


def test_rules_need_the_admin_scope_and_the_catalog_scope_reads(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, learner="off", api_keys="admin:a1,catalog:c1,serve:s1")
    seed_catalog(settings.database_url, ITEMS)
    body = {"action": "block", "items": [ITEMS[0].item_id]}
    with TestClient(create_app(settings)) as client:
        for key, status in (("s1", 403), ("c1", 403), ("a1", 201)):
            answer = client.put("/v1/rules/b", json=body, headers={"x-api-key": key})
            assert answer.status_code == status
        assert client.get("/v1/rules", headers={"x-api-key": "s1"}).status_code == 403
        assert client.get("/v1/rules", headers={"x-api-key": "c1"}).status_code == 200


def test_each_rule_type_shapes_the_slate_with_exact_propensities(
    rules_client: TestClient,
) -> None:
    client = rules_client
    pinned = ITEMS[7].item_id
    promoted = set(_ids(ITEMS, category=ITEMS[3].category))
    blocked = set(_ids(ITEMS, brand=ITEMS[9].brand))
    boosted = set(_ids(ITEMS, category="home/bedding")) - blocked  # 17 items
    rules = {
        "pin": {"action": "pin", "items": [pinned], "slots": [1]},
        "promote": {"action": "promote", "filter": {"category": [ITEMS[3].category]}, "share": 0.2},
        "block": {"action": "block", "filter": {"brand": [ITEMS[9].brand]}},
        "boost": {"action": "boost", "filter": {"category": ["home/bedding"]}, "weight": 0.5},
    }
    for name, body in rules.items():
        assert client.put(f"/v1/rules/{name}", json=body).status_code == 201
    greedy_firsts = []
    for user in range(20):
        items = _slate(client, f"u{user}")["items"]
        kinds = [item["kind"] for item in items]
        assert kinds[1] == "pinned" and items[1]["item_id"] == pinned
        assert items[1]["propensity"] == 1.0 and items[1]["source"] == "rule"
        assert items[1]["reason"] == "featured by the shop"
        assert all(items[j]["reason"].startswith("promoted: ") for j in (3, 7))
        assert [j for j, kind in enumerate(kinds) if kind == "promoted"] == [3, 7]
        assert {items[j]["item_id"] for j in (3, 7)} <= promoted
        assert not {item["item_id"] for item in items} & blocked
        assert all(0 < item["propensity"] <= 1 for item in items)
        if items[0]["propensity"] > 0.5:  # the greedy pick, not an exploration draw
            greedy_firsts.append(items[0]["item_id"])
    # An untrained model ties every score: the boost alone ranks the exploit slots.
    assert len(greedy_firsts) >= 15 and set(greedy_firsts) <= boosted
    # A bury of the same items, heavier than the boost, takes them out of the first slot.
    bury = {"action": "bury", "filter": {"category": ["home/bedding"]}, "weight": 2.0}
    assert client.put("/v1/rules/bury", json=bury).status_code == 201
    firsts = [_slate(client, f"v{user}")["items"][0] for user in range(20)]
    assert not {f["item_id"] for f in firsts if f["propensity"] > 0.5} & boosted


def test_rules_keep_to_their_placements_and_their_time(rules_client: TestClient) -> None:
    client = rules_client
    pinned = ITEMS[7].item_id
    pin = {"action": "pin", "items": [pinned], "slots": [0], "placements": ["category"]}
    assert client.put("/v1/rules/category-pin", json=pin).status_code == 201
    assert _slate(client, "u1")["items"][0]["kind"] != "pinned"  # home is not a category page
    later = {"action": "pin", "items": [pinned], "slots": [0], "start": time.time() + 3600}
    assert client.put("/v1/rules/category-pin", json=later).status_code == 200
    assert _slate(client, "u2")["items"][0]["kind"] != "pinned"  # not yet
    now = {**later, "start": time.time() - 1, "end": "2999-01-01T00:00:00Z"}
    assert client.put("/v1/rules/category-pin", json=now).status_code == 200
    assert _slate(client, "u3")["items"][0]["item_id"] == pinned


def test_a_pinned_item_the_shopper_excluded_or_a_block_removed_is_not_pinned(
    rules_client: TestClient,
) -> None:
    client = rules_client
    pinned = ITEMS[7].item_id
    assert (
        client.put(
            "/v1/rules/pin", json={"action": "pin", "items": [pinned], "slots": [0]}
        ).status_code
        == 201
    )
    assert _slate(client, "u1", exclude=[pinned])["items"][0]["item_id"] != pinned
    block = {"action": "block", "items": [pinned]}
    assert client.put("/v1/rules/block", json=block).status_code == 201
    assert pinned not in {item["item_id"] for item in _slate(client, "u2")["items"]}


def test_a_rule_put_on_one_server_reaches_another_within_its_catalog_poll(
    tmp_path: Path,
) -> None:
    """Two apps on one database, as two workers: a rule put through the first shapes the
    second's slates once its rules job has run (every catalog poll)."""
    settings = make_settings(tmp_path, learner="off", catalog_poll_seconds=0.05)
    seed_catalog(settings.database_url, ITEMS)
    pinned = ITEMS[7].item_id
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        body = {"action": "pin", "items": [pinned], "slots": [0]}
        assert first.put("/v1/rules/pin", json=body).status_code == 201
        deadline = time.monotonic() + 10
        while _slate(second, "u1")["items"][0]["item_id"] != pinned:
            assert time.monotonic() < deadline, "the second server never applied the rule"


# Replay of rule-shaped logs ---------------------------------------------------------------


def _serve_shaped(settings: Settings, users: int, rounds: int) -> None:
    """Slates under every rule type, for shoppers who come back (so rotation shifts their
    scores too), with the liked items rewarded."""
    with TestClient(create_app(settings)) as client:
        for name, body in _RULES.items():
            assert client.put(f"/v1/rules/{name}", json=body).status_code in (200, 201)
        for _ in range(rounds):
            for user in range(users):
                slate = _slate(client, f"u{user}", k=6)
                for item in slate["items"]:
                    if liked(item["item_id"]):
                        reward = {"event_id": slate["event_id"], "item_id": item["item_id"]}
                        assert client.post("/v1/rewards", json=reward).status_code == 202


_RULES = {
    "pin": {"action": "pin", "items": [ITEMS[7].item_id], "slots": [2]},
    "promote": {"action": "promote", "filter": {"category": [ITEMS[3].category]}, "share": 0.3},
    "block": {"action": "block", "filter": {"brand": [ITEMS[9].brand]}},
    "boost": {"action": "boost", "filter": {"brand": [ITEMS[11].brand]}, "weight": 0.4},
    "bury": {"action": "bury", "filter": {"category": [ITEMS[0].category]}, "weight": 0.3},
}


def _logged_probabilities(settings: Settings, target: Target, since: float) -> tuple:  # type: ignore[type-arg]
    """Every logged slot's propensity beside the target's probability for it."""
    engine = open_engine(settings.database_url)
    p_log, p_target, kinds, shifted = [], [], [], 0
    try:
        for chunk, revisions in read_chunks(engine, Window(since=since, until=4e9)):
            values = np.zeros(chunk.valid.shape)
            found = target.probabilities(chunk, revisions, values, Exploration())
            p_log.append(chunk.p_log)
            p_target.append(found.p_target)
            kinds.append(chunk.layout[chunk.row, chunk.slot])
            shifted += int((chunk.shift != 0).any(axis=1).sum())
    finally:
        target.close()
        engine.dispose()
    return np.concatenate(p_log), np.concatenate(p_target), np.concatenate(kinds), shifted


@pytest.mark.parametrize("policy", ["vw", "popular", "random"])
def test_replay_of_a_rule_shaped_log_recomputes_every_logged_propensity(
    tmp_path: Path, policy: str
) -> None:
    """Slates served under pin, promote, block, boost and bury rules and rotation, replayed
    with the policy that served them: every slot's probability equals its logged propensity,
    pinned slots included, so the logging policy's weights are all 1."""
    settings = make_settings(
        tmp_path, learner="off", reward_wait=0, epsilon=0.3, promotion="always", policy=policy
    )
    seed_catalog(settings.database_url, ITEMS)
    spec = policy
    if policy == "vw":  # a trained model, so scores differ and the shifts matter
        _serve_shaped(settings, users=15, rounds=2)
        engine = open_engine(settings.database_url)
        learner = Learner(engine, settings, holder="test")
        learner.run_due(now=time.time() + 3600)
        assert learner.checkpoint() == 1
        engine.dispose()
        spec = "vw@1"
    since = time.time()
    _serve_shaped(settings, users=15, rounds=3)
    engine = open_engine(settings.database_url)
    target = parse_target(spec, engine)
    engine.dispose()
    p_log, p_target, kinds, shifted = _logged_probabilities(settings, target, since)
    assert len(p_log) == 15 * 3 * 6
    assert set(kinds) >= {"p", "m"} and shifted > 0  # pinned, promoted and shifted slates
    assert np.all(p_target[kinds == "p"] == 1.0)
    assert np.allclose(p_target, p_log, rtol=1e-9, atol=1e-12)


def test_replay_under_rules_is_not_the_logging_policy_by_accident(tmp_path: Path) -> None:
    """The check above can fail: the same log replayed with another policy gives other
    probabilities on the slots the rules did not fix."""
    settings = make_settings(tmp_path, learner="off", epsilon=0.3, policy="popular")
    seed_catalog(settings.database_url, ITEMS)
    since = time.time()
    _serve_shaped(settings, users=10, rounds=2)
    p_log, p_target, kinds, _ = _logged_probabilities(settings, PolicyTarget(Random()), since)
    free = kinds != "p"
    assert not np.allclose(p_target[free], p_log[free])
    p_log, p_popular, kinds, _ = _logged_probabilities(
        settings, PolicyTarget(Popular(Exploration(epsilon=0.3))), since
    )
    assert np.allclose(p_popular, p_log)


def test_a_category_page_shows_no_rule_item_from_outside_its_category(
    rules_client: TestClient,
) -> None:
    client = rules_client
    outside = next(i for i in ITEMS if not i.category.startswith("women"))
    pin = {"action": "pin", "items": [outside.item_id], "slots": [0]}
    assert client.put("/v1/rules/pin", json=pin).status_code == 201
    promote = {"action": "promote", "items": [outside.item_id], "share": 0.5}
    assert client.put("/v1/rules/promote", json=promote).status_code == 201
    items = _slate(client, "u1", placement="category", category="women")["items"]
    assert all(ITEMS_BY_ID[item["item_id"]].category.startswith("women") for item in items)
    assert {item["kind"] for item in items}.isdisjoint({"pinned", "promoted"})
    assert _slate(client, "u2")["items"][0]["item_id"] == outside.item_id  # home: pinned


ITEMS_BY_ID = {item.item_id: item for item in ITEMS}


def test_rules_placements_and_revenue_over_a_real_server(tmp_path: Path) -> None:
    """One real uvicorn on a loopback port: a rule of each type, a slate at each placement,
    purchases with their value, and the summary by placement."""
    import httpx2 as httpx

    from tests.conftest import live_server

    settings = make_settings(tmp_path, learner="off", objective="revenue")
    seed_catalog(settings.database_url, ITEMS)
    pinned = ITEMS[7].item_id
    rules = {
        "pin": {"action": "pin", "items": [pinned], "slots": [0], "placements": ["home"]},
        "promote": {"action": "promote", "filter": {"category": ["home"]}, "share": 0.4},
        "boost": {"action": "boost", "filter": {"brand": [ITEMS[11].brand]}, "weight": 0.5},
        "bury": {"action": "bury", "filter": {"category": ["kids"]}, "weight": 0.5},
        "block": {"action": "block", "filter": {"brand": [ITEMS[9].brand]}},
    }
    blocked = set(_ids(ITEMS, brand=ITEMS[9].brand))
    revenue = 0.0
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=30) as client:
        for name, body in rules.items():
            assert client.put(f"/v1/rules/{name}", json=body).status_code == 201
        pages = {
            "home": {},
            "item": {"item_id": ITEMS[20].item_id},
            "cart": {"items": [ITEMS[21].item_id, ITEMS[22].item_id]},
            "category": {"category": "women"},
        }
        for user, (placement, fields) in enumerate(pages.items()):
            body = {"user_id": f"u{user}", "k": 5, "placement": placement, **fields}
            slate = client.post("/v1/slates", json=body).json()
            kinds = [item["kind"] for item in slate["items"]]
            shown = {item["item_id"] for item in slate["items"]}
            assert (kinds[0] == "pinned") == (placement == "home")
            assert not shown & blocked and slate["next_page"]
            if placement == "category":
                assert all(ITEMS_BY_ID[i].category.startswith("women") for i in shown)
            else:  # home goods are promoted wherever there are some
                assert "promoted" in kinds
            bought = slate["items"][1]["item_id"]
            reward = {
                "event_id": slate["event_id"],
                "item_id": bought,
                "type": "purchase",
                "value": ITEMS_BY_ID[bought].price,
            }
            assert client.post("/v1/rewards", json=reward).status_code == 202
            revenue += reward["value"]
        summary = client.get("/v1/metrics/summary").json()
    shares = {p["placement"]: p["share"] for p in summary["placements"]}
    assert shares == {placement: 0.25 for placement in pages}
    assert summary["overall"]["conversions"] == 4
    assert summary["overall"]["revenue"] == pytest.approx(revenue)


def test_a_decision_records_the_rule_versions_that_shaped_it(tmp_path: Path) -> None:
    """The payload's rule set reads back, through ``rules_at``, as the versions in force when
    the slate was made, after the rules changed."""
    from sqlalchemy import select

    from slatebandit.logging.records import DecisionPayload
    from slatebandit.logging.rules import rules_at
    from slatebandit.logging.schema import decisions

    settings = make_settings(tmp_path, learner="off")
    seed_catalog(settings.database_url, ITEMS)
    body = {"action": "pin", "items": [ITEMS[7].item_id], "slots": [0]}
    with TestClient(create_app(settings)) as client:
        client.put("/v1/rules/pin", json=body)
        first = _slate(client, "u1")["event_id"]
        client.put("/v1/rules/pin", json={**body, "items": [ITEMS[8].item_id]})
        client.put("/v1/rules/block", json={"action": "block", "items": [ITEMS[9].item_id]})
        second = _slate(client, "u2")["event_id"]
        client.delete("/v1/rules/pin")
        client.delete("/v1/rules/block")
        third = _slate(client, "u3")["event_id"]
    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        payloads = dict(conn.execute(select(decisions.c.event_id, decisions.c.payload)).all())
        in_force = {
            event: [(r.name, r.version) for r in rules_at(conn, DecisionPayload.decode(p).rules)]
            for event, p in payloads.items()
        }
    engine.dispose()
    assert in_force[first] == [("pin", 1)]
    assert in_force[second] == [("block", 1), ("pin", 2)]
    assert DecisionPayload.decode(payloads[third]).rules == 0  # no rule shaped it
