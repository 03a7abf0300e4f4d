"""Who may call what: every route against no key, a wrong key and a key of each scope; keys
compared in constant time and never logged; a rate limit per key."""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from slatebandit.bandit import FEATURE_SPEC_VERSION, VWScorer
from slatebandit.logging import models, open_engine
from slatebandit.retrieval.demo import demo_items
from slatebandit.server import create_app
from slatebandit.server.auth import RateLimiter, scopes_of
from tests.conftest import make_settings, seed_catalog

KEYS = {
    "serve": "key-serve",
    "catalog": "key-catalog",
    "analyst": "key-analyst",
    "admin": "key-admin",
}
ITEMS = list(demo_items(200, seed=9))
_fresh = itertools.count()


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: Any = None
    raw: bytes | None = None


@dataclass(frozen=True)
class Case:
    """A route, the scope it needs (None: open), and a valid call to it (made anew each time,
    since some calls change what the next may do)."""

    route: str
    scope: str | None
    call: Callable[[TestClient], Call]


def _as_admin(client: TestClient, method: str, path: str, body: Any = None) -> Any:
    response = client.request(method, path, json=body, headers={"x-api-key": KEYS["admin"]})
    assert response.status_code < 300, (path, response.text)
    return response.json() if response.content else None


def _slate(client: TestClient) -> dict[str, Any]:
    return _as_admin(client, "POST", "/v1/slates", {"user_id": "u1", "k": 3})


def _ranked(client: TestClient, multislot: bool = False) -> str:
    body: dict[str, Any] = {"actions": [{"id": "a"}, {"id": "b"}]}
    if multislot:
        body["slots"] = [{"id": "s", "baselineAction": "a"}]
    path = "/personalizer/multislot/rank" if multislot else "/personalizer/rank"
    return str(_as_admin(client, "POST", path, body)["eventId"])


def _experiment(client: TestClient) -> str:
    """A running experiment of a fresh name (the last one stopped: one runs at a time)."""
    for running in _as_admin(client, "GET", "/v1/experiments")["experiments"]:
        if running["status"] == "running":
            _as_admin(client, "DELETE", f"/v1/experiments/{running['name']}")
    name = f"ab{next(_fresh)}"
    arms = [
        {"name": "control", "policy": "popular", "share": 0.5},
        {"name": "treatment", "policy": "random", "share": 0.5},
    ]
    _as_admin(client, "PUT", f"/v1/experiments/{name}", {"arms": arms})
    return name


def _two_champions(client: TestClient) -> None:
    _as_admin(client, "POST", "/v1/models/1/promote")
    _as_admin(client, "POST", "/v1/models/2/promote")


WINDOW = {"name": "w", "startTime": "2020-01-01T00:00:00Z", "endTime": "2100-01-01T00:00:00Z"}
PZ_SERVICE = {
    "rewardWaitTime": "PT10M",
    "defaultReward": 0,
    "rewardAggregation": "earliest",
    "explorationPercentage": 0.2,
    "modelExportFrequency": "PT5M",
    "logRetentionDays": -1,
}


def _rule(client: TestClient) -> str:
    name = f"r{next(_fresh)}"
    _as_admin(client, "PUT", f"/v1/rules/{name}", {"action": "block", "items": [ITEMS[2].item_id]})
    return name


def _evaluation(client: TestClient) -> str:
    name = f"ev{next(_fresh)}"
    _as_admin(client, "PUT", f"/personalizer/evaluations/{name}", {**WINDOW, "name": name})
    return name


CASES = [
    Case("POST /v1/slates", "serve", lambda c: Call("POST", "/v1/slates", {"user_id": "u2"})),
    Case(
        "POST /v1/rewards",
        "serve",
        lambda c: Call(
            "POST",
            "/v1/rewards",
            {"event_id": (s := _slate(c))["event_id"], "item_id": s["items"][0]["item_id"]},
        ),
    ),
    Case(
        "POST /v1/events",
        "serve",
        lambda c: Call(
            "POST", "/v1/events", {"user_id": "u3", "item_id": ITEMS[0].item_id, "type": "view"}
        ),
    ),
    Case(
        "PUT /v1/items",
        "catalog",
        lambda c: Call(
            "PUT",
            "/v1/items",
            [{"item_id": f"new-{next(_fresh)}", "title": "t", "category": "shoes"}],
        ),
    ),
    Case(
        "DELETE /v1/items/{item_id}",
        "catalog",
        lambda c: Call("DELETE", f"/v1/items/{ITEMS[next(_fresh)].item_id}"),
    ),
    Case("GET /v1/items", "analyst", lambda c: Call("GET", "/v1/items?q=a")),
    Case(
        "GET /v1/items/{item_id}", "analyst", lambda c: Call("GET", f"/v1/items/{ITEMS[0].item_id}")
    ),
    Case(
        "DELETE /v1/users/{user_id}",
        "admin",
        lambda c: Call("DELETE", f"/v1/users/u{next(_fresh)}"),
    ),
    Case("GET /v1/models", "analyst", lambda c: Call("GET", "/v1/models")),
    Case(
        "POST /v1/models/{version}/promote", "admin", lambda c: Call("POST", "/v1/models/1/promote")
    ),
    Case(
        "POST /v1/models/rollback",
        "admin",
        lambda c: (_two_champions(c), Call("POST", "/v1/models/rollback"))[1],
    ),
    Case("GET /v1/rules", "catalog", lambda c: Call("GET", "/v1/rules")),
    Case(
        "PUT /v1/rules/{name}",
        "admin",
        lambda c: Call(
            "PUT", f"/v1/rules/r{next(_fresh)}", {"action": "block", "items": [ITEMS[1].item_id]}
        ),
    ),
    Case(
        "DELETE /v1/rules/{name}",
        "admin",
        lambda c: Call("DELETE", f"/v1/rules/{_rule(c)}"),
    ),
    Case("GET /v1/experiments", "analyst", lambda c: Call("GET", "/v1/experiments")),
    Case(
        "PUT /v1/experiments/{name}",
        "admin",
        lambda c: Call(
            "PUT",
            f"/v1/experiments/{_experiment(c)}",
            {
                "arms": [
                    {"name": "control", "policy": "popular", "share": 0.3},
                    {"name": "treatment", "policy": "random", "share": 0.7},
                ]
            },
        ),
    ),
    Case(
        "GET /v1/experiments/{name}",
        "analyst",
        lambda c: Call("GET", f"/v1/experiments/{_experiment(c)}"),
    ),
    Case(
        "DELETE /v1/experiments/{name}",
        "admin",
        lambda c: Call("DELETE", f"/v1/experiments/{_experiment(c)}"),
    ),
    Case(
        "GET /v1/experiments/{name}/report",
        "analyst",
        lambda c: Call("GET", f"/v1/experiments/{_experiment(c)}/report"),
    ),
    Case(
        "POST /v1/evaluations",
        "analyst",
        lambda c: Call("POST", "/v1/evaluations", {"policies": ["random"], "bootstrap": 0}),
    ),
    Case(
        "GET /v1/evaluations/{id}",
        "analyst",
        lambda c: Call(
            "GET",
            "/v1/evaluations/"
            + _as_admin(c, "POST", "/v1/evaluations", {"policies": ["random"], "bootstrap": 0})[
                "id"
            ],
        ),
    ),
    Case("GET /healthz", None, lambda c: Call("GET", "/healthz")),
    Case("GET /openapi.json", None, lambda c: Call("GET", "/openapi.json")),
    Case("GET /metrics", "analyst", lambda c: Call("GET", "/metrics")),
    Case("GET /v1/stats", "analyst", lambda c: Call("GET", "/v1/stats")),
    Case("GET /v1/metrics/summary", "analyst", lambda c: Call("GET", "/v1/metrics/summary")),
    Case("GET /v1/evaluations", "analyst", lambda c: Call("GET", "/v1/evaluations")),
    # Open: the console's page, and who the presented key is (a 200 for any key, tested in
    # tests/test_console_access.py)
    Case("GET /", None, lambda c: Call("GET", "/")),
    Case("GET /v1/access", None, lambda c: Call("GET", "/v1/access")),
    # Personalizer's routes
    Case(
        "POST rank",
        "serve",
        lambda c: Call("POST", "/personalizer/rank", {"actions": [{"id": "a"}]}),
    ),
    Case(
        "POST events/{id}/reward",
        "serve",
        lambda c: Call("POST", f"/personalizer/events/{_ranked(c)}/reward", {"value": 1}),
    ),
    Case(
        "POST events/{id}/activate",
        "serve",
        lambda c: Call("POST", f"/personalizer/events/{_ranked(c)}/activate"),
    ),
    Case(
        "POST multislot/rank",
        "serve",
        lambda c: Call(
            "POST",
            "/personalizer/multislot/rank",
            {"actions": [{"id": "a"}], "slots": [{"id": "s", "baselineAction": "a"}]},
        ),
    ),
    Case(
        "POST multislot/events/{id}/reward",
        "serve",
        lambda c: Call(
            "POST",
            f"/personalizer/multislot/events/{_ranked(c, True)}/reward",
            {"reward": [{"slotId": "s", "value": 1}]},
        ),
    ),
    Case(
        "POST multislot/events/{id}/activate",
        "serve",
        lambda c: Call("POST", f"/personalizer/multislot/events/{_ranked(c, True)}/activate"),
    ),
    Case(
        "GET configurations/service",
        "admin",
        lambda c: Call("GET", "/personalizer/configurations/service"),
    ),
    Case(
        "PUT configurations/service",
        "admin",
        lambda c: Call("PUT", "/personalizer/configurations/service", PZ_SERVICE),
    ),
    Case(
        "GET configurations/policy",
        "admin",
        lambda c: Call("GET", "/personalizer/configurations/policy"),
    ),
    Case(
        "PUT configurations/policy",
        "admin",
        lambda c: Call(
            "PUT",
            "/personalizer/configurations/policy",
            {"name": "p", "arguments": "--cb_explore_adf -q :: --cb_type mtr"},
        ),
    ),
    Case(
        "DELETE configurations/policy",
        "admin",
        lambda c: Call("DELETE", "/personalizer/configurations/policy"),
    ),
    Case(
        "POST configurations/applyFromEvaluation",
        "admin",
        lambda c: Call(
            "POST",
            "/personalizer/configurations/applyFromEvaluation",
            {"evaluationId": _evaluation(c), "policyName": "Online"},
        ),
    ),
    Case("GET model", "admin", lambda c: Call("GET", "/personalizer/model")),
    Case(
        "PUT model",
        "admin",
        lambda c: Call(
            "PUT",
            "/personalizer/model",
            raw=c.get("/personalizer/model", headers={"x-api-key": KEYS["admin"]}).content,
        ),
    ),
    Case("DELETE model", "admin", lambda c: Call("DELETE", "/personalizer/model")),
    Case("GET model/properties", "admin", lambda c: Call("GET", "/personalizer/model/properties")),
    Case("GET logs/properties", "admin", lambda c: Call("GET", "/personalizer/logs/properties")),
    Case("DELETE logs", "admin", lambda c: Call("DELETE", "/personalizer/logs")),
    Case("GET evaluations", "admin", lambda c: Call("GET", "/personalizer/evaluations")),
    Case(
        "PUT evaluations/{id}",
        "admin",
        lambda c: Call("PUT", f"/personalizer/evaluations/new{next(_fresh)}", WINDOW),
    ),
    Case(
        "POST evaluations (v1.0)",
        "admin",
        lambda c: Call("POST", "/personalizer/v1.0/evaluations", WINDOW),
    ),
    Case(
        "GET evaluations/{id}",
        "admin",
        lambda c: Call("GET", f"/personalizer/evaluations/{_evaluation(c)}"),
    ),
    Case(
        "DELETE evaluations/{id}",
        "admin",
        lambda c: Call("DELETE", f"/personalizer/evaluations/{_evaluation(c)}"),
    ),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp_path: Path = tmp_path_factory.mktemp("access")
    keys = ",".join(f"{scope}:{key}" for scope, key in KEYS.items())
    settings = make_settings(tmp_path, api_keys=keys, learner="off")
    seed_catalog(settings.database_url, ITEMS)
    engine = open_engine(settings.database_url)
    empty = VWScorer(settings.vw_args)
    with engine.begin() as conn:  # two model versions, for promote and rollback
        for _ in range(2):
            models.save_version(
                conn,
                parent=None,
                vw_args=settings.vw_args,
                feature_spec=FEATURE_SPEC_VERSION,
                examples=0,
                learned_through=0,
                model=empty.to_bytes(),
            )
    engine.dispose()
    with TestClient(create_app(settings)) as client:
        yield client


def _send(client: TestClient, call: Call, key: str | None) -> int:
    headers = {} if key is None else {"x-api-key": key}
    if call.raw is not None:
        headers["content-type"] = "application/octet-stream"
        return client.request(call.method, call.path, content=call.raw, headers=headers).status_code
    return client.request(call.method, call.path, json=call.body, headers=headers).status_code


@pytest.mark.parametrize("case", CASES, ids=[c.route for c in CASES])
@pytest.mark.parametrize("who", ["no key", "wrong key", *KEYS])
def test_every_route_answers_each_key_by_its_scope(
    client: TestClient, case: Case, who: str
) -> None:
    key = {"no key": None, "wrong key": "key-nobody"}.get(who, KEYS.get(who))
    status = _send(client, case.call(client), key)
    if case.scope is None or who == "admin" or who == case.scope:
        assert 200 <= status < 300, (case.route, who, status)
    elif who in ("no key", "wrong key"):
        assert status == 401, (case.route, who, status)
    else:
        assert status == 403, (case.route, who, status)


def _spelled(method: str, path: str) -> str:
    """A route as CASES spells it: no path convertors, ``{id}`` for Personalizer's ids."""
    path = re.sub(r"\{(\w+):\w+\}", r"{\1}", path)
    if not path.startswith(("/v1", "/healthz", "/metrics")) and path not in ("/openapi.json", "/"):
        path = path.lstrip("/").replace("{event_id}", "{id}").replace("{evaluation_id}", "{id}")
    elif path.startswith("/v1/evaluations/"):
        path = path.replace("{evaluation_id}", "{id}")
    return f"{method} {path}"


def test_the_table_covers_every_route(client: TestClient) -> None:
    """A route added to the app must join CASES: every route it serves appears there."""
    app = client.app
    routes = {
        _spelled(method, route.path)
        for route in app.routes  # type: ignore[attr-defined]
        if isinstance(route, Route)
        for method in route.methods - {"HEAD"}
    }
    mount = next(r for r in app.routes if isinstance(r, Mount) and r.path == "/personalizer")  # type: ignore[attr-defined]
    routes |= {
        _spelled(method, route.path)
        for route in mount.routes
        if isinstance(route, Route) and not route.path.startswith("/v1")
        for method in route.methods - {"HEAD"}
    }
    covered = {c.route.removesuffix(" (v1.0)") for c in CASES}
    assert routes == covered


def test_keys_are_compared_in_constant_time_and_never_logged(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    keys = {"abc": frozenset({"serve"}), "abd": frozenset({"admin"})}
    assert scopes_of("abd", keys) == frozenset({"admin"})
    assert scopes_of("ab", keys) is None and scopes_of("abcd", keys) is None
    caplog.set_level(logging.DEBUG)
    for case in CASES:
        for key in (*KEYS.values(), "key-nobody"):
            _send(client, case.call(client), key)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged  # the server did log
    assert not any(key in logged for key in (*KEYS.values(), "key-nobody"))


def test_rate_limit_per_key(tmp_path: Path) -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    for _ in range(3):
        limiter.take("k", now=100.0)
    with pytest.raises(Exception) as limited:
        limiter.take("k", now=100.0)
    assert limited.value.retry_after == 1  # type: ignore[attr-defined]
    limiter.take("other", now=100.0)  # each key has its own bucket
    limiter.take("k", now=100.5)  # half a second refills one request

    # One request per 100 s, two at once: the test never waits long enough to earn a third.
    settings = make_settings(
        tmp_path, api_keys="serve:s1,serve:s2", learner="off", rate_limit=0.01, rate_burst=2
    )
    seed_catalog(settings.database_url, ITEMS)
    with TestClient(create_app(settings)) as api:
        s1, s2 = {"x-api-key": "s1"}, {"x-api-key": "s2"}
        slates = [api.post("/v1/slates", json={"user_id": "u"}, headers=s1) for _ in range(3)]
        assert [a.status_code for a in slates] == [200, 200, 429]
        assert 0 < int(slates[2].headers["retry-after"]) <= 100
        assert slates[2].json()["error"]["code"] == "too_many_requests"
        rank = api.post("/personalizer/rank", json={"actions": [{"id": "a"}]}, headers=s1)
        assert rank.status_code == 429 and rank.json()["error"]["code"] == "TooManyRequests"
        assert int(rank.headers["retry-after"]) > 0
        assert api.post("/v1/slates", json={"user_id": "u"}, headers=s2).status_code == 200
