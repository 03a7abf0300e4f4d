"""Personalizer's REST API as plain JSON: the v1.0 and v1.1-preview.3 paths older SDKs and the
REST samples use, Personalizer's error shape for bad input (which writes nothing), loops, and
PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vowpalwabbit
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from slatebandit.config import Settings
from slatebandit.logging import open_engine
from slatebandit.logging.schema import pz_events, pz_rewards
from slatebandit.personalizer.learner import PersonalizerLearner, stored_configurations
from slatebandit.policies.learner import COMMIT_LAG
from slatebandit.server import create_app
from tests.conftest import make_settings

KEY = {"Ocp-Apim-Subscription-Key": "admin-key"}
V1 = "/personalizer/v1.0"
PREVIEW = "/personalizer/v1.1-preview.3"
ACTIONS = [
    {"id": "pasta", "features": [{"cuisine": "italian", "spice": 1}]},
    {"id": "curry", "features": [{"cuisine": "indian", "spice": 3}]},
    {"id": "salad", "features": [{"cuisine": "greek", "spice": 0}]},
]
RANK = {"contextFeatures": [{"time": "evening"}], "actions": ACTIONS}


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(
        tmp_path,
        api_keys="serve:serve-key,admin:admin-key",
        learner="off",
        personalizer_loops="default,news",
        **overrides,
    )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tmp_path)), headers=KEY) as client:
        yield client


def _counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        events = conn.execute(select(func.count()).select_from(pz_events)).scalar_one()
        rewards = conn.execute(select(func.count()).select_from(pz_rewards)).scalar_one()
    return events, rewards


def _learn(engine: Engine, loops: tuple[str, ...] = ("default",)) -> None:
    """Learn everything logged so far (a clock past PostgreSQL's commit lag) and checkpoint."""
    learner = PersonalizerLearner(engine, "test")
    learner.turn(stored_configurations(engine, loops), budget=1e9, now=time.time() + COMMIT_LAG)
    learner.stop()


def test_v1_rank_reward_activate_and_evaluations(api: TestClient, tmp_path: Path) -> None:
    ranked = api.post(f"{V1}/rank", json={**RANK, "eventId": "e1", "deferActivation": True})
    assert ranked.status_code == 201, ranked.text
    body = ranked.json()
    assert body["eventId"] == "e1" and body["rewardActionId"] == body["ranking"][0]["id"]
    assert api.post(f"{V1}/events/e1/reward", json={"value": 1}).status_code == 204
    assert api.post(f"{V1}/events/e1/activate").status_code == 204
    assert api.post(f"{V1}/events/e1/activate").status_code == 204  # twice is harmless

    config = api.get(f"{V1}/configurations/service").json()
    config["rewardWaitTime"] = "00:00:00"  # the .NET form the v1.0 samples use
    assert api.put(f"{V1}/configurations/service", json=config).status_code == 200
    engine = open_engine(_settings(tmp_path).database_url)
    _learn(engine)
    engine.dispose()
    assert api.get(f"{V1}/model/properties").json()["examples"] == 1

    contract = {
        "name": "v1",
        "startTime": "2020-01-01T00:00:00Z",
        "endTime": "2100-01-01T00:00:00Z",
        "enableOfflineExperimentation": False,
        "policies": [{"name": "alt", "arguments": "--cb_explore_adf -q :: --cb_type mtr"}],
    }
    created = api.post(f"{V1}/evaluations", json=contract)
    assert created.status_code == 201, created.text
    evaluation = created.json()
    assert created.headers["location"].endswith(f"{V1}/evaluations/{evaluation['id']}")
    assert evaluation["status"] == "completed"  # v1.0 spells its statuses in lower case
    results = {r["name"]: r for r in evaluation["policyResults"]}
    assert set(results) == {"Online", "Baseline", "Random", "alt"}
    total = results["Online"]["totalSummary"]
    assert total["ipsEstimatorNumerator"] == 1 and total["averageReward"] == 1.0
    listed = api.get(f"{V1}/evaluations").json()
    assert isinstance(listed, list) and listed[0]["id"] == evaluation["id"]
    assert api.delete(f"{V1}/evaluations/{evaluation['id']}").status_code == 204
    assert api.get(f"{V1}/evaluations").json() == []


def test_preview_multislot_paths(api: TestClient) -> None:
    body = {
        **RANK,
        "slots": [
            {"id": "main", "baselineAction": "pasta"},
            {"id": "side", "baselineAction": "salad"},
        ],
    }
    ranked = api.post(f"{PREVIEW}/multislot/rank", json=body)
    assert ranked.status_code == 201, ranked.text
    event_id = ranked.json()["eventId"]
    reward = {"reward": [{"slotId": "main", "value": 1}, {"slotId": "side", "value": 0.5}]}
    assert api.post(f"{PREVIEW}/multislot/events/{event_id}/reward", json=reward).status_code == 204
    assert api.post(f"{PREVIEW}/multislot/events/{event_id}/activate").status_code == 204
    single = api.post(f"{PREVIEW}/events/{event_id}/reward", json={"value": 1})
    assert single.status_code == 400 and single.json()["error"]["code"] == "InvalidRewardRequest"


def test_loops_are_separate_and_unknown_ones_are_404(api: TestClient) -> None:
    api.put(
        "/loops/news/personalizer/configurations/policy",
        json={"name": "news", "arguments": "--cb_explore_adf -l 0.1 -q :: --cb_type mtr"},
    )
    assert api.get("/personalizer/configurations/policy").json()["name"] == "default"
    assert api.get("/loops/news/personalizer/configurations/policy").json()["name"] == "news"
    assert api.post("/loops/news/personalizer/rank", json=RANK).status_code == 201
    assert api.get("/loops/news/personalizer/logs/properties").json()["events"] == 1
    assert api.get("/personalizer/logs/properties").json()["events"] == 0
    missing = api.post("/loops/sports/personalizer/rank", json=RANK)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "ResourceNotFound"
    route = api.get("/personalizer/no/such/route")
    assert route.status_code == 404 and route.headers["x-ms-error-code"] == "ResourceNotFound"


def _too_many() -> dict[str, Any]:
    return {"actions": [{"id": f"a{i}", "features": []} for i in range(501)]}


def _deep() -> dict[str, Any]:
    nested: dict[str, Any] = {"leaf": 1}
    for _ in range(20):
        nested = {"n": nested}
    return {"contextFeatures": [{"user": nested}], "actions": ACTIONS}


BAD_RANKS = [
    ({"actions": []}, "actions"),
    ({"actions": "pasta"}, "actions"),
    ({"actions": [{"features": []}]}, "actions[0].id"),
    ({"actions": [{"id": "x" * 257}]}, "actions[0].id"),
    ({"actions": [{"id": "a"}, {"id": "a"}]}, "actions"),
    ({**RANK, "excludedActions": ["pizza"]}, "excludedActions"),
    ({**RANK, "excludedActions": ["pasta", "curry", "salad"]}, "excludedActions"),
    ({**RANK, "eventId": ""}, "eventId"),
    ({**RANK, "deferActivation": "yes"}, "deferActivation"),
    ({**RANK, "contextFeatures": {"time": "evening"}}, "contextFeatures"),
    ({**RANK, "contextFeatures": [{"price": float("inf")}]}, "contextFeatures[0].price"),
    (_too_many(), "actions"),
    (_deep(), "contextFeatures[0].user.n.n.n.n.n.n.n.n.n"),
]


@pytest.mark.parametrize("body, target", BAD_RANKS)
def test_bad_ranks_get_personalizer_errors_and_write_nothing(
    api: TestClient, tmp_path: Path, body: dict[str, Any], target: str
) -> None:
    raw = json.dumps(body)  # Python writes inf as Infinity, which Python's JSON reader takes
    response = api.post(
        "/personalizer/rank", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "InvalidRankRequest" == response.headers["x-ms-error-code"]
    assert error["target"] == target
    engine = open_engine(_settings(tmp_path).database_url)
    assert _counts(engine) == (0, 0)
    engine.dispose()


def test_bad_multislot_ranks_and_rewards(api: TestClient, tmp_path: Path) -> None:
    cases = [
        ({**RANK, "slots": []}, "slots"),
        ({**RANK, "slots": [{"id": "s"}]}, "slots[0].baselineAction"),
        ({**RANK, "slots": [{"id": "s", "baselineAction": "pasta"}] * 2}, "slots[1].id"),
        (
            {**RANK, "slots": [{"id": f"s{i}", "baselineAction": "pasta"} for i in range(4)]},
            "slots[3]",
        ),  # three actions cannot fill four slots
    ]
    for body, target in cases:
        response = api.post("/personalizer/multislot/rank", json=body)
        assert response.status_code == 400 and response.json()["error"]["target"] == target, body
    ranked = api.post("/personalizer/rank", json={**RANK, "eventId": "r1"}).json()
    bad_rewards = [
        ({"value": 1.5}, "value"),
        ({"value": "1"}, "value"),
        ({}, "value"),
    ]
    for body, target in bad_rewards:
        response = api.post(f"/personalizer/events/{ranked['eventId']}/reward", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"] == {
            "code": "InvalidRewardRequest",
            "message": response.json()["error"]["message"],
            "target": target,
        }
    nan = api.post(
        "/personalizer/events/r1/reward",
        content=b'{"value": NaN}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 400 and nan.json()["error"]["target"] == "value"
    duplicate = api.post("/personalizer/rank", json={**RANK, "eventId": "r1"})
    assert duplicate.status_code == 400 and duplicate.json()["error"]["target"] == "eventId"
    unknown = api.post("/personalizer/events/nope/activate")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "ResourceNotFound"
    version = api.post("/personalizer/rank?api-version=2019-01-01", json=RANK)
    assert version.status_code == 400 and version.json()["error"]["target"] == "api-version"
    huge = api.post(
        "/personalizer/rank", content=b" " * 2_000_000, headers={"content-type": "application/json"}
    )
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "PayloadSizeExceeded"
    engine = open_engine(_settings(tmp_path).database_url)
    assert _counts(engine) == (1, 0)
    engine.dispose()


def test_bad_configurations_name_the_field(api: TestClient) -> None:
    good = api.get("/personalizer/configurations/service").json()
    cases = {
        "rewardWaitTime": "ten minutes",
        "defaultReward": 3,
        "rewardAggregation": "median",
        "explorationPercentage": -0.1,
        "modelExportFrequency": "PT0S",
        "logRetentionDays": 0,
        "learningMode": "Offline",
    }
    for field, value in cases.items():
        response = api.put("/personalizer/configurations/service", json={**good, field: value})
        assert response.status_code == 400, field
        assert response.json()["error"]["code"] == "InvalidServiceConfiguration"
        assert response.json()["error"]["target"] == field
    assert api.get("/personalizer/configurations/service").json() == good
    for arguments in ("--cb_explore_adf --bogus", "--cb", "-d /etc/passwd --cb_explore_adf", ""):
        response = api.put(
            "/personalizer/configurations/policy", json={"name": "p", "arguments": arguments}
        )
        assert response.status_code == 400, arguments
        assert response.json()["error"]["code"] == "InvalidPolicyConfiguration"
    assert api.get("/personalizer/configurations/policy").json()["name"] == "default"


def test_keys(tmp_path: Path) -> None:
    with TestClient(create_app(_settings(tmp_path))) as client:
        assert client.post("/personalizer/rank", json=RANK).status_code == 401
        serve = {"Ocp-Apim-Subscription-Key": "serve-key"}
        assert client.post("/personalizer/rank", json=RANK, headers=serve).status_code == 201
        forbidden = client.get("/personalizer/model", headers=serve)
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["code"] == "Forbidden"


@pytest.mark.postgres
def test_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    settings = _settings(tmp_path, db_url=pg_url)
    with TestClient(create_app(settings), headers=KEY) as api:
        config = api.get("/personalizer/configurations/service").json()
        api.put("/personalizer/configurations/service", json={**config, "rewardWaitTime": "PT0S"})
        for i in range(20):
            ranked = api.post("/personalizer/rank", json={**RANK, "eventId": f"pg-{i}"}).json()
            if ranked["rewardActionId"] == "curry":
                api.post(f"/personalizer/events/pg-{i}/reward", json={"value": 1})
        engine = open_engine(pg_url)
        _learn(engine)
        assert api.get("/personalizer/model/properties").json()["examples"] == 20
        assert (
            api.put(
                "/personalizer/evaluations/pg",
                json={
                    "name": "pg",
                    "startTime": "2020-01-01T00:00:00Z",
                    "endTime": "2100-01-01T00:00:00Z",
                },
            ).status_code
            == 200
        )
        got = api.get("/personalizer/evaluations/pg").json()
        assert got["status"] == "Succeeded"
        assert {v["name"] for v in got["content"]["value"]} == {"Online", "Baseline", "Random"}
        api.delete("/personalizer/logs")
        assert _counts(engine) == (0, 0)
        engine.dispose()


def test_events_after_delete_logs_are_learned(api: TestClient, tmp_path: Path) -> None:
    """SQLite would hand out the ids of deleted events again; the learner's progress is an id,
    so the new events would look learned already. The event ids never repeat."""
    config = api.get("/personalizer/configurations/service").json()
    api.put("/personalizer/configurations/service", json={**config, "rewardWaitTime": "PT0S"})
    engine = open_engine(_settings(tmp_path).database_url)
    for _ in range(3):
        api.post("/personalizer/rank", json=RANK)
    _learn(engine)
    assert api.delete("/personalizer/logs").status_code == 204
    for _ in range(2):
        api.post("/personalizer/rank", json=RANK)
    _learn(engine)
    assert api.get("/personalizer/model/properties").json()["examples"] == 5
    engine.dispose()


def test_importing_an_exploring_model_is_refused(api: TestClient, tmp_path: Path) -> None:
    """A --cb_explore_adf model (Azure's kind) answers probabilities, not scores: served as
    scores it would pick its least likely action."""
    explorer = vowpalwabbit.Workspace("--cb_explore_adf --epsilon 0.5 -q :: --quiet")
    saved = tmp_path / "explorer.vw"
    explorer.save(str(saved))
    explorer.finish()
    before = api.get("/personalizer/model/properties").json()["version"]
    response = api.put(
        "/personalizer/model",
        content=saved.read_bytes(),
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "InvalidModelImportFormat"
    assert "cb_explore_adf" in response.json()["error"]["message"]
    assert api.get("/personalizer/model/properties").json()["version"] == before


def test_hostile_values_get_400s_and_write_nothing(api: TestClient, tmp_path: Path) -> None:
    huge = "1" + "0" * 400  # a JSON integer no float can hold
    raw = {
        "/personalizer/rank": '{"actions": [{"id": "a", "features": [{"n": ' + huge + "}]}]}",
        "/personalizer/multislot/rank": json.dumps(  # Personalizer's limit is 50 slots
            {
                "actions": [{"id": f"a{i}"} for i in range(60)],
                "slots": [{"id": f"s{i}", "baselineAction": "a0"} for i in range(51)],
            }
        ),
    }
    for path, body in raw.items():
        response = api.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (path, response.text)
    deep = "[" * 100_000 + "]" * 100_000
    response = api.post(
        "/personalizer/rank", content=deep, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"]["target"] == "body"
    config = api.get("/personalizer/configurations/service").json()
    for field, value in (
        ("explorationPercentage", huge),
        ("logRetentionDays", huge),
        ("modelExportFrequency", '"P' + "9" * 400 + 'D"'),
    ):
        body = json.dumps(config).replace(
            f'"{field}": ' + json.dumps(config[field]), f'"{field}": {value}'
        )
        response = api.put(
            "/personalizer/configurations/service",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400 and response.json()["error"]["target"] == field
    for query in ("top=%C2%B2", "top=0", "skip=99999999999999999999"):
        assert api.get(f"/personalizer/evaluations?{query}").status_code == 400, query
    for start, end in (
        ("0001-01-01T00:00:00+01:00", "2020-01-01T00:00:00Z"),
        ("2020-01-01T00:00:00Z", "9999-12-31T23:59:59-10:00"),
    ):
        response = api.put(
            "/personalizer/evaluations/e1", json={"name": "e1", "startTime": start, "endTime": end}
        )
        assert response.status_code == 400, response.text
    assert api.get("/personalizer/evaluations").json() == {"value": []}
    api.put(
        "/personalizer/evaluations/e1",
        json={"name": "e1", "startTime": "2020-01-01T00:00:00Z", "endTime": "2100-01-01T00:00:00Z"},
    )
    assert api.get("/personalizer/evaluations/e1?intervalInMinutes=%C2%B2").status_code == 400
    missing = api.get("/personalizer/evaluations/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "EvaluationNotFound"
    nul = api.post("/personalizer/rank", json={**RANK, "eventId": "a\x00b"})
    assert nul.status_code == 400 and nul.json()["error"]["target"] == "eventId"
    engine = open_engine(_settings(tmp_path).database_url)
    assert _counts(engine) == (0, 0)
    engine.dispose()
