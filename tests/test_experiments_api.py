"""A/B experiments over HTTP: assignment, logging, reports, validation, scopes (real app,
SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from slatebandit.logging import open_engine
from slatebandit.logging.schema import decisions
from slatebandit.policies.experiment_book import ExperimentBook
from slatebandit.retrieval.demo import demo_items
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog

ADMIN, SERVE, ANALYST = {"x-api-key": "root"}, {"x-api-key": "s"}, {"x-api-key": "a"}
USERS = [f"user-{i}" for i in range(4000)]


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, api_keys="admin:root,serve:s,analyst:a", learner="off")
    seed_catalog(settings.database_url, list(demo_items(300, seed=4)))
    with TestClient(create_app(settings)) as client:
        yield settings, client


AB = {
    "arms": [
        {"name": "control", "policy": "popular", "share": 0.5},
        {"name": "treatment", "policy": "vw", "share": 0.5},
    ]
}


def test_experiments_over_http_assign_log_and_report(server) -> None:  # type: ignore[no-untyped-def]
    settings, client = server
    created = client.put("/v1/experiments/homepage", json=AB, headers=ADMIN)
    assert created.status_code == 201, created.text
    assert created.json()["control"] == "control" and created.json()["status"] == "running"
    assert client.get("/healthz").json()["experiment"] == "homepage"

    seen: dict[str, tuple[str, str]] = {}
    for i in range(60):
        user = f"u{i % 20}"
        body = client.post("/v1/slates", json={"user_id": user, "k": 4}, headers=SERVE).json()
        arm = (body["arm"], body["policy"])
        assert seen.setdefault(user, arm) == arm  # sticky per user
        assert body["experiment"] == "homepage"
        assert arm in {("control", "popular"), ("treatment", "vw")}
        first = body["items"][0]
        if i % 3 == 0:
            reward = {"event_id": body["event_id"], "item_id": first["item_id"]}
            assert client.post("/v1/rewards", json=reward, headers=SERVE).status_code == 202
    assert {arm for arm, _ in seen.values()} == {"control", "treatment"}

    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(decisions.c.user_id, decisions.c.experiment, decisions.c.arm, decisions.c.policy)
        ).all()
    engine.dispose()
    assert len(rows) == 60
    assert all(r.experiment == "homepage" and (r.arm, r.policy) == seen[r.user_id] for r in rows)

    answer = client.get("/v1/experiments/homepage/report", headers=ANALYST)
    assert answer.status_code == 200
    arms = {a["arm"]: a for a in answer.json()["arms"]}
    assert sum(a["slates"] for a in arms.values()) == 60
    assert sum(a["clicks"] for a in arms.values()) == 20
    assert sum(a["impressions"] for a in arms.values()) == 240
    assert "vs_control" in arms["treatment"] and "vs_control" not in arms["control"]
    vs_control = arms["treatment"]["vs_control"]
    low, high = vs_control["low"], vs_control["high"]
    assert low <= vs_control["difference"] <= high
    assert vs_control["anytime_low"] < low and high < vs_control["anytime_high"]
    assert vs_control["anytime_significant"] in (True, False)

    # A second experiment must wait; a share change keeps control's users in control.
    other = client.put("/v1/experiments/other", json=AB, headers=ADMIN)
    assert other.status_code == 409 and other.json()["error"]["field"] == "name"
    changed = {"arms": [{**AB["arms"][0], "share": 0.8}, {**AB["arms"][1], "share": 0.2}]}
    assert client.put("/v1/experiments/homepage", json=changed, headers=ADMIN).status_code == 200
    for user, (arm, _) in seen.items():
        if arm == "control":
            body = client.post("/v1/slates", json={"user_id": user, "k": 2}, headers=SERVE).json()
            assert body["arm"] == "control"

    stopped = client.delete("/v1/experiments/homepage", headers=ADMIN)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    body = client.post("/v1/slates", json={"user_id": "u1", "k": 2}, headers=SERVE).json()
    assert "experiment" not in body and body["policy"] == "vw"
    assert (
        client.get("/v1/experiments/homepage/report", headers=ANALYST).json()["status"] == "stopped"
    )
    again = client.put("/v1/experiments/homepage", json=AB, headers=ADMIN)
    assert again.status_code == 409
    assert client.put("/v1/experiments/other", json=AB, headers=ADMIN).status_code == 201
    listed = client.get("/v1/experiments", headers=ANALYST).json()["experiments"]
    assert [(e["name"], e["status"]) for e in listed] == [
        ("homepage", "stopped"),
        ("other", "running"),
    ]


def test_assignment_survives_a_restart(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, client = server
    assert client.put("/v1/experiments/ab", json=AB, headers=ADMIN).status_code == 201
    before = {
        u: client.post("/v1/slates", json={"user_id": u, "k": 1}, headers=SERVE).json()["arm"]
        for u in USERS[:30]
    }
    engine = open_engine(settings.database_url)
    book = ExperimentBook(engine)  # what another worker, or this one restarted, reads
    book.refresh()
    assert {u: book.assign(u)[1].name for u in USERS[:30]} == before  # type: ignore[index]
    engine.dispose()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "arms"),
        ({"arms": [{"name": "a", "policy": "vw", "share": 1.0}]}, "arms"),
        (
            {
                "arms": [
                    {"name": "a", "policy": "vw", "share": 0.5},
                    {"name": "a", "policy": "popular", "share": 0.5},
                ]
            },
            "arms",
        ),
        (
            {
                "arms": [
                    {"name": "a", "policy": "vw", "share": 0.7},
                    {"name": "b", "policy": "popular", "share": 0.7},
                ]
            },
            "arms",
        ),
        (
            {
                "arms": [
                    {"name": "a", "policy": "greedy", "share": 0.5},
                    {"name": "b", "policy": "popular", "share": 0.5},
                ]
            },
            "arms[0].policy",
        ),
        (
            {
                "arms": [
                    {"name": "a", "policy": "vw@77", "share": 0.5},
                    {"name": "b", "policy": "popular", "share": 0.5},
                ]
            },
            "arms[0].policy",
        ),
        (
            {
                "arms": [
                    {"name": "a", "policy": "vw", "share": 0},
                    {"name": "b", "policy": "popular", "share": 0.5},
                ]
            },
            "arms[0].share",
        ),
        (
            {
                "arms": [
                    {"name": "a", "policy": "vw", "share": "half"},
                    {"name": "b", "policy": "popular", "share": 0.5},
                ]
            },
            "arms[0].share",
        ),
        (
            {
                "arms": [
                    {"name": "a b", "policy": "vw", "share": 0.5},
                    {"name": "b", "policy": "popular", "share": 0.5},
                ]
            },
            "arms[0].name",
        ),
        ({**AB, "control": "nobody"}, "control"),
        ({**AB, "salt": "x"}, "salt"),
        (
            {
                "arms": [
                    {"name": "a", "policy": "vw", "share": 10**400},
                    {"name": "b", "policy": "popular", "share": 0.5},
                ]
            },
            "arms[0].share",
        ),
        (
            {
                "arms": [
                    {"name": "a", "policy": "vw@\u00b2", "share": 0.5},
                    {"name": "b", "policy": "popular", "share": 0.5},
                ]
            },
            "arms[0].policy",
        ),
        (
            {
                "arms": [
                    {"name": "a", "policy": "vw@99999999999999999999", "share": 0.5},
                    {"name": "b", "policy": "popular", "share": 0.5},
                ]
            },
            "arms[0].policy",
        ),
        (
            {
                "arms": [
                    {"name": "a", "policy": "vw@007", "share": 0.5},
                    {"name": "b", "policy": "popular", "share": 0.5},
                ]
            },
            "arms[0].policy",
        ),
        (
            {
                "arms": [
                    {"name": "a", "policy": "blend:vw=1e6,popular=1", "share": 0.5},
                    {"name": "b", "policy": "popular", "share": 0.5},
                ]
            },
            "arms[0].policy",
        ),
        ({"arms": "two"}, "arms"),
        ([1, 2], "body"),
    ],
)
def test_bad_experiments_are_refused_by_field_and_write_nothing(server, body, field) -> None:  # type: ignore[no-untyped-def]
    _, client = server
    answer = client.put("/v1/experiments/bad", json=body, headers=ADMIN)
    assert answer.status_code in (400, 404), answer.text
    assert answer.json()["error"]["field"] == field
    assert client.get("/v1/experiments/bad", headers=ANALYST).status_code == 404


def test_msgpack_bodies_with_odd_keys_are_refused_by_name(server) -> None:  # type: ignore[no-untyped-def]
    import msgpack

    _, client = server
    arms = [
        {"name": "a", "policy": "vw", "share": 0.5},
        {"name": "b", "policy": "popular", "share": 0.5},
    ]
    for body in (
        {b"arms": arms},
        {"arms": arms, b"x": 1},
        {"arms": [{**arms[0], b"k": 1}, arms[1]]},
    ):
        answer = client.put(
            "/v1/experiments/bad",
            content=msgpack.packb(body, use_bin_type=True),
            headers={**ADMIN, "content-type": "application/msgpack"},
        )
        assert answer.status_code == 400, answer.text
        assert isinstance(answer.json()["error"]["field"], str)


def test_an_arm_keeps_its_policy(server) -> None:  # type: ignore[no-untyped-def]
    _, client = server
    assert client.put("/v1/experiments/ab", json=AB, headers=ADMIN).status_code == 201
    swapped = {"arms": [AB["arms"][0], {**AB["arms"][1], "policy": "random"}]}
    answer = client.put("/v1/experiments/ab", json=swapped, headers=ADMIN)
    assert answer.status_code == 409 and answer.json()["error"]["field"] == "arms[1].policy"
    shown = client.get("/v1/experiments/ab", headers=ANALYST).json()
    assert [a["policy"] for a in shown["arms"]] == ["popular", "vw"]


@pytest.mark.postgres
def test_the_report_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    settings = make_settings(
        tmp_path, db_url=pg_url, api_keys="admin:root,serve:s,analyst:a", learner="off"
    )
    seed_catalog(settings.database_url, list(demo_items(200, seed=4)))
    with TestClient(create_app(settings)) as client:
        assert client.put("/v1/experiments/pg", json=AB, headers=ADMIN).status_code == 201
        for i in range(30):
            body = client.post(
                "/v1/slates", json={"user_id": f"p{i}", "k": 3}, headers=SERVE
            ).json()
            if i % 2 == 0:
                reward = {"event_id": body["event_id"], "item_id": body["items"][0]["item_id"]}
                assert client.post("/v1/rewards", json=reward, headers=SERVE).status_code == 202
        answer = client.get("/v1/experiments/pg/report", headers=ANALYST)
        assert answer.status_code == 200, answer.text
        arms = answer.json()["arms"]
        assert sum(a["slates"] for a in arms) == 30 and sum(a["clicks"] for a in arms) == 15
        assert sum(a["impressions"] for a in arms) == 90


def test_scopes_guard_the_experiment_routes(server) -> None:  # type: ignore[no-untyped-def]
    _, client = server
    assert client.put("/v1/experiments/ab", json=AB, headers=SERVE).status_code == 403
    assert client.put("/v1/experiments/ab", json=AB, headers=ANALYST).status_code == 403
    assert client.put("/v1/experiments/ab", json=AB).status_code == 401
    assert client.put("/v1/experiments/ab", json=AB, headers=ADMIN).status_code == 201
    assert client.get("/v1/experiments/ab", headers=ANALYST).status_code == 200
    assert client.get("/v1/experiments/ab/report", headers=SERVE).status_code == 403
    assert client.delete("/v1/experiments/ab", headers=ANALYST).status_code == 403


@pytest.mark.postgres
def test_two_workers_cannot_both_start_an_experiment(pg_url: str) -> None:
    """Two transactions race to start different experiments; the lock lets one win."""
    import threading

    from slatebandit.errors import Conflict
    from slatebandit.policies.experiment_book import put_experiment

    engine = open_engine(pg_url)
    barrier, outcomes = threading.Barrier(2), []

    def start(name: str) -> None:
        barrier.wait()
        try:
            with engine.begin() as conn:
                put_experiment(conn, name, AB)
                # Hold the transaction open a moment, so the other one runs into it.
                threading.Event().wait(0.2)
            outcomes.append("started")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=start, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    assert sorted(outcomes) == ["conflict", "started"]
