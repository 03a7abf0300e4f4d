"""Azure's own Personalizer clients (``azure-ai-personalizer`` 1.0.0b1, ``azure-core``) against
slatebandit under a real uvicorn on a loopback port, with ``AzureKeyCredential``."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from azure.ai.personalizer import PersonalizerAdministrationClient, PersonalizerClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from sqlalchemy import Engine, func, select

from slatebandit.logging import open_engine
from slatebandit.logging.schema import pz_events, pz_rewards
from slatebandit.personalizer.events import Event
from slatebandit.personalizer.learner import PersonalizerLearner, stored_configurations
from tests.conftest import live_server, make_settings

SERVE, ADMIN = "serve-key", "admin-key"
TOPICS = ("sports", "politics", "food", "travel", "tech", "music")
ACTIONS = [{"id": t, "features": [{"topic": t, "length": i % 3}]} for i, t in enumerate(TOPICS)]
USERS = [("morning", "mobile"), ("evening", "desktop"), ("noon", "tablet"), ("night", "mobile")]
PREFERRED = {user: TOPICS[i] for i, user in enumerate(USERS)}  # the hidden preference


class Loop:
    """Both clients, and the database under them, for one test."""

    def __init__(self, endpoint: str, engine: Engine) -> None:
        self.client = PersonalizerClient(endpoint, AzureKeyCredential(SERVE))
        self.admin = PersonalizerAdministrationClient(endpoint, AzureKeyCredential(ADMIN))
        self.endpoint, self.engine = endpoint, engine
        self.learner = PersonalizerLearner(engine, "test")

    def configure(self, **changes: Any) -> dict[str, Any]:
        config = self.admin.get_service_configuration()
        config.update(changes)
        return self.admin.update_service_configuration(config)

    def learn(self) -> None:
        """Learn everything due and checkpoint, then make the server load the new model (a
        configuration write refreshes the loop at once)."""
        self.learner.turn(stored_configurations(self.engine, ["default"]), budget=1e9)
        self.learner.stop()
        self.configure()

    def events(self) -> list[tuple[str, bool, Event]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(pz_events.c.event_id, pz_events.c.activated, pz_events.c.payload).order_by(
                    pz_events.c.id
                )
            ).all()
        return [(r.event_id, r.activated, Event.from_bytes(r.payload)) for r in rows]

    def reward_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(pz_rewards)).scalar_one()


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    settings = make_settings(tmp_path, api_keys=f"serve:{SERVE},admin:{ADMIN}", learner="off")
    engine = open_engine(settings.database_url)
    with live_server(settings) as endpoint:
        yield Loop(endpoint, engine)
    engine.dispose()


def context(user: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"time": user[0]}, {"device": {"kind": user[1]}, "_trace": "ignored"}]


def test_rank_reward_activate_through_the_client(loop: Loop) -> None:
    ranked = loop.client.rank(
        {"contextFeatures": context(USERS[0]), "actions": ACTIONS, "excludedActions": ["food"]}
    )
    ranking = ranked["ranking"]
    assert [r["id"] for r in ranking][-1] == "food" and ranking[-1]["probability"] == 0
    assert ranking[0]["id"] == ranked["rewardActionId"]
    assert sorted(r["id"] for r in ranking) == sorted(TOPICS)
    assert sum(r["probability"] for r in ranking) == pytest.approx(1.0)
    assert all(r["probability"] > 0 for r in ranking[:-1])  # 20% exploration over the rest

    loop.client.reward(ranked["eventId"], {"value": 1.0})
    loop.client.activate(ranked["eventId"])
    ((event_id, activated, event),) = loop.events()
    assert event_id == ranked["eventId"] and activated
    slot = event.slots[0]
    assert event.action_ids[slot.chosen] == ranked["rewardActionId"]
    assert slot.propensity == pytest.approx(ranking[0]["probability"])  # the logged truth
    assert "_trace" not in event.context and "device" in event.context
    assert loop.reward_count() == 1

    deferred = loop.client.rank(
        {
            "contextFeatures": context(USERS[1]),
            "actions": ACTIONS,
            "deferActivation": True,
            "eventId": "order/42",
        }
    )
    assert deferred["eventId"] == "order/42"
    assert [a for _, a, _ in loop.events()] == [True, False]
    loop.client.activate("order/42")  # an id with a slash arrives percent-encoded
    assert [a for _, a, _ in loop.events()] == [True, True]
    with pytest.raises(ResourceNotFoundError) as missing:
        loop.client.reward("no-such-event", {"value": 1.0})
    assert missing.value.error.code == "ResourceNotFound"
    with pytest.raises(HttpResponseError) as bad:
        loop.client.reward(ranked["eventId"], {"value": 2.0})
    assert bad.value.status_code == 400 and bad.value.error.code == "InvalidRewardRequest"
    assert loop.reward_count() == 1  # refused rewards wrote nothing


def test_multislot_through_the_client(loop: Loop) -> None:
    body = {
        "contextFeatures": context(USERS[2]),
        "actions": ACTIONS,
        "slots": [
            {"id": "hero", "baselineAction": "sports", "features": [{"size": "large"}]},
            {
                "id": "side",
                "baselineAction": "food",
                "excludedActions": ["tech"],
                "positionFeatures": [{"position": 2}],
            },
        ],
    }
    ranked = loop.client.rank_multi_slot(body)
    slots = {s["id"]: s["rewardActionId"] for s in ranked["slots"]}
    assert list(slots) == ["hero", "side"]
    assert slots["hero"] != slots["side"] and slots["side"] != "tech"
    loop.client.reward_multi_slot(ranked["eventId"], {"reward": [{"slotId": "hero", "value": 1}]})
    loop.client.reward_multi_slot(
        ranked["eventId"],
        {"reward": [{"slotId": "hero", "value": 0.5}, {"slotId": "side", "value": 1}]},
    )
    loop.client.activate_multi_slot(ranked["eventId"])
    assert loop.reward_count() == 3  # several calls add up
    ((_, _, event),) = loop.events()
    assert "size=large" in event.slots[0].features and "position:2" in event.slots[1].features
    side = event.allowed(1)  # slot 2 could not take tech nor slot 1's pick
    assert not side[TOPICS.index("tech")] and not side[event.slots[0].chosen]
    with pytest.raises(HttpResponseError) as bad:
        loop.client.reward_multi_slot(ranked["eventId"], {"reward": [{"slotId": "x", "value": 1}]})
    assert bad.value.error.code == "InvalidRewardRequest"


def test_keys_and_scopes(loop: Loop) -> None:
    anonymous = PersonalizerClient(loop.endpoint, AzureKeyCredential("wrong"))
    with pytest.raises(ClientAuthenticationError):
        anonymous.rank({"actions": ACTIONS})
    serve_as_admin = PersonalizerAdministrationClient(loop.endpoint, AzureKeyCredential(SERVE))
    with pytest.raises(HttpResponseError) as forbidden:
        serve_as_admin.get_policy()
    assert forbidden.value.status_code == 403 and forbidden.value.error.code == "Forbidden"
    assert loop.events() == []


def test_service_policy_and_model_administration(loop: Loop) -> None:
    config = loop.configure(
        rewardWaitTime=dt.timedelta(minutes=5),  # serialised zero-padded: PT05M00S
        defaultReward=-0.5,
        rewardAggregation="sum",
        explorationPercentage=0.1,
        modelExportFrequency="00:01:00",
        logRetentionDays=30,
    )
    assert config["rewardWaitTime"] == "PT5M" and config["modelExportFrequency"] == "PT1M"
    assert loop.admin.get_service_configuration()["explorationPercentage"] == 0.1
    config["explorationPercentage"] = 1.5
    with pytest.raises(HttpResponseError) as bad:
        loop.admin.update_service_configuration(config)
    assert bad.value.error.code == "InvalidServiceConfiguration"
    assert bad.value.response.headers["x-ms-error-code"] == "InvalidServiceConfiguration"
    assert "explorationPercentage" in str(bad.value)

    before = loop.admin.get_model_properties()["version"]
    policy = {
        "name": "quick",
        "arguments": "--cb_explore_adf --epsilon 0.3 -l 0.5 -q :: --cb_type mtr",
    }
    assert loop.admin.update_policy(policy) == policy
    assert loop.admin.get_policy() == policy
    assert loop.admin.get_model_properties()["version"] > before  # new arguments, new model
    with pytest.raises(HttpResponseError) as refused:
        loop.admin.update_policy({"name": "x", "arguments": "--cb_explore_adf --no_such_option"})
    assert refused.value.error.code == "InvalidPolicyConfiguration"
    assert loop.admin.reset_policy()["name"] == "default"

    for user in USERS:
        ranked = loop.client.rank({"contextFeatures": context(user), "actions": ACTIONS})
        loop.client.reward(ranked["eventId"], {"value": 1.0})
    loop.configure(rewardWaitTime="PT0S")
    loop.learn()
    learned = loop.admin.get_model_properties()
    assert learned["origin"] == "learned" and learned["examples"] == len(USERS)
    exported = b"".join(loop.admin.export_model())
    loop.admin.reset_model()
    assert loop.admin.get_model_properties()["origin"] == "reset"
    loop.admin.import_model(io.BytesIO(exported))
    imported = loop.admin.get_model_properties()
    assert imported["origin"] == "imported"
    assert b"".join(loop.admin.export_model()) == exported  # the same VW model serves
    with pytest.raises(HttpResponseError) as garbage:
        loop.admin.import_model(io.BytesIO(b"not a model"))
    assert garbage.value.status_code == 400
    assert loop.admin.get_model_properties()["version"] == imported["version"]

    logs = loop.admin.get_log_properties()
    assert set(logs["dateRange"]) == {"from", "to"}
    loop.admin.delete_logs()
    assert loop.admin.get_log_properties()["dateRange"] == {} and loop.events() == []


def _simulate(loop: Loop, rng: np.random.Generator, n: int, **rank: Any) -> float:
    """``n`` rank/reward rounds; the share of ranks that picked the user's preferred action."""
    hits = 0
    for _ in range(n):
        user = USERS[rng.integers(len(USERS))]
        ranked = loop.client.rank({"contextFeatures": context(user), "actions": ACTIONS, **rank})
        hit = ranked["rewardActionId"] == PREFERRED[user]
        hits += hit
        if rng.random() < (0.8 if hit else 0.1):
            loop.client.reward(ranked["eventId"], {"value": 1.0})
    return hits / n


@pytest.mark.slow
def test_a_simulated_loop_learns_the_hidden_preference(loop: Loop) -> None:
    """3,000 rank/reward calls through the client with Personalizer's default policy: the share
    of ranks that pick the rewarded action rises from chance to near the best possible."""
    loop.configure(rewardWaitTime="PT0S", explorationPercentage=0.2)
    rng = np.random.default_rng(11)
    shares = []
    for _ in range(10):
        shares.append(_simulate(loop, rng, 300))
        loop.learn()
    best = 0.8 + 0.2 / len(TOPICS)  # exploit the preferred action, explore uniformly
    assert shares[0] < 0.35  # chance is 1/6 plus a little
    assert min(shares[-3:]) > 0.7 and max(shares) <= best + 0.06


def test_apprentice_serves_the_baseline_and_reports_agreement(loop: Loop) -> None:
    """The caller's rule shows the preferred topic 70% of the time. Apprentice mode serves that
    rule's choice, learns from its rewards, and reports how often it would have chosen the same:
    more often as it learns, and in the end picks the preferred topic itself."""
    loop.configure(rewardWaitTime="PT0S", learningMode="Apprentice")
    quick = {"name": "quick", "arguments": "--cb_explore_adf -l 0.5 -q :: --cb_type mtr"}
    loop.admin.update_policy(quick)
    rng = np.random.default_rng(5)
    batches = []
    for _ in range(4):
        for _ in range(150):
            user = USERS[rng.integers(len(USERS))]
            rule = PREFERRED[user] if rng.random() < 0.7 else TOPICS[rng.integers(len(TOPICS))]
            actions = sorted(ACTIONS, key=lambda a: a["id"] != rule)  # the baseline first
            ranked = loop.client.rank({"contextFeatures": context(user), "actions": actions})
            assert ranked["rewardActionId"] == rule and ranked["ranking"][0]["probability"] == 1
            if rng.random() < (0.8 if rule == PREFERRED[user] else 0.1):
                loop.client.reward(ranked["eventId"], {"value": 1.0})
        loop.learn()
        metrics = loop.admin.get_service_configuration()["latestApprenticeModeMetrics"]
        batch = metrics["lastBatchMetrics"]
        assert batch["numberOfEvents"] == 150
        batches.append(batch["numberOfImitatedEvents"] / batch["numberOfEvents"])
    assert metrics["numberOfEvents"] == 600
    assert metrics["numberOfImitatedEvents"] == pytest.approx(sum(batches) * 150)
    # An untrained model ties, and ties go to the first action, the baseline; once trained it
    # agrees where the rule is right (70%, plus the rule's lucky picks).
    assert batches[-1] > max(batches[0], 0.7)
    # Switched to Online without exploration, the model picks the preferred topic itself.
    loop.configure(learningMode="Online", explorationPercentage=0.0)
    picks = [
        loop.client.rank({"contextFeatures": context(u), "actions": ACTIONS})["rewardActionId"]
        for u in USERS
    ]
    assert picks == [PREFERRED[u] for u in USERS]


def test_logging_only_serves_the_baseline_and_learns_nothing(loop: Loop) -> None:
    loop.configure(rewardWaitTime="PT0S", learningMode="LoggingOnly")
    for user in USERS:
        ranked = loop.client.rank({"contextFeatures": context(user), "actions": ACTIONS})
        assert ranked["rewardActionId"] == ACTIONS[0]["id"]
        loop.client.reward(ranked["eventId"], {"value": 1.0})
    loop.learn()
    assert loop.admin.get_model_properties()["examples"] == 0
    assert len(loop.events()) == len(USERS)


def test_evaluations_through_the_client(loop: Loop) -> None:
    loop.configure(rewardWaitTime="PT0S", explorationPercentage=1.0)  # a uniform logger
    rng = np.random.default_rng(3)
    _simulate(loop, rng, 400)
    loop.configure(explorationPercentage=0.1)  # learned policies are evaluated exploring so
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    contract = {
        "name": "compare",
        "startTime": start,
        "endTime": end,
        "policies": [{"name": "fast", "arguments": "--cb_explore_adf -l 0.5 -q :: --cb_type mtr"}],
        "enablePolicyOptimization": True,
    }
    assert loop.admin.create_evaluation("compare", contract) is None  # PUT answers 200
    with pytest.raises(ResourceExistsError):
        loop.admin.create_evaluation("compare", contract)
    evaluation = loop.admin.get_evaluation(
        "compare", start_time=start, end_time=end, interval_in_minutes=60, window="Rolling"
    )
    assert evaluation["status"] == "Succeeded"
    results = {p["name"]: p for p in evaluation["content"]["value"]}
    assert set(results) >= {"Online", "Baseline", "Random", "fast"}
    optimal = evaluation["optimalPolicy"]  # a name, as Personalizer's
    assert results[optimal]["policySource"] == "OfflineExperimentation"
    online = results["Online"]["summary"]
    low, high = results["fast"]["summary"]["confidenceInterval"]
    assert low < results["fast"]["summary"]["expectedReward"] < high
    assert results["fast"]["summary"]["expectedReward"] > online["expectedReward"]
    assert results["fast"]["timeseries"]["data"]

    loop.admin.apply_from_evaluation({"evaluationId": "compare", "policyName": optimal})
    assert loop.admin.get_policy() == {"name": optimal, "arguments": results[optimal]["arguments"]}
    for name in ("b", "c"):
        loop.admin.create_evaluation(name, {**contract, "name": name, "policies": []})
    listed = list(loop.admin.list_evaluations(top=2))  # two pages, by nextLink
    assert [e["id"] for e in listed] == ["compare", "b", "c"]
    assert all(e["status"] == "Succeeded" for e in listed)
    loop.admin.delete_evaluation("b")
    with pytest.raises(ResourceNotFoundError):
        loop.admin.get_evaluation("b", start_time=start, end_time=end)
