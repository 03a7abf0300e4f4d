"""The Personalizer loop's pieces, without HTTP: feature text, configuration parsing, the
exact probabilities of multi-slot picks, the learner's exactly-once bookkeeping, and the
evaluation estimates."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare
from sqlalchemy import Engine

from slatebandit.bandit import VWScorer
from slatebandit.errors import InvalidInput
from slatebandit.logging import open_engine
from slatebandit.logging import personalizer as store
from slatebandit.personalizer.arguments import scorer_arguments, with_learning_rate
from slatebandit.personalizer.configuration import (
    PolicyConfiguration,
    ServiceConfiguration,
    format_duration,
    parse_duration,
)
from slatebandit.personalizer.evaluation import (
    evaluate,
    learned_probabilities,
    read_log,
    render,
)
from slatebandit.personalizer.events import Event
from slatebandit.personalizer.features import namespaces
from slatebandit.personalizer.learner import LoopLearner
from slatebandit.personalizer.loops import Loop, Loops, SlotRequest, new_model

ARGS = "--cb_adf --cb_type mtr -q :: -l 0.5"


@pytest.mark.parametrize(
    "features, text",
    [
        ([{"device": "mobile"}], "| device=mobile"),
        ([{"user": {"tier": "gold", "visits": 3}}], "|user tier=gold visits:3"),
        ([{"user": {"vip": True, "banned": False, "note": None}}], "|user vip"),
        ([{"f": {"v": [0.5, 2]}}], "|f v_0:0.5 v_1:2"),
        ([{"f": {"tags": ["new york", "a|b:c"]}}], "|f tags=new_york tags=a_b_c"),
        ([{"f": {"geo": {"city": "Oslo", "lat": 59.9}}}], "|f geo_city=Oslo geo_lat:59.9"),
        ([{"_id": 7, "f": {"_url": "x", "k": 1}}], "|f k:1"),  # Personalizer ignores _names
        ([{"a": 1}, {"g": {"x": 1}}, {"b": "y"}], "| a:1 b=y |g x:1"),
        (None, ""),
        ([], ""),
    ],
)
def test_features_become_vw_text_as_vw_json_would(features: object, text: str) -> None:
    assert namespaces(features, "contextFeatures") == text


@pytest.mark.parametrize(
    "features, field",
    [
        ({"a": 1}, "contextFeatures"),
        (["a"], "contextFeatures[0]"),
        ([{"f": {"x": math.nan}}], "contextFeatures[0].f.x"),
        ([{"f": {"x": [[[[[[[[[[1]]]]]]]]]]}}], "contextFeatures[0].f.x" + "[0]" * 9),
    ],
)
def test_bad_features_name_their_path(features: object, field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        namespaces(features, "contextFeatures")
    assert refused.value.field == field


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("PT10M", 600),
        ("PT10M00S", 600),  # azure-core writes a timedelta zero-padded
        ("P1DT00H00M00S", 86400),
        ("PT05S", 5),
        ("PT02H00M00.5S", 7200.5),
        ("P2D", 172800),
        ("00:10:00", 600),
        ("1.02:00:00", 93600),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "rewardWaitTime") == seconds
    assert parse_duration(format_duration(seconds), "x") == seconds


@pytest.mark.parametrize("text", ["", "P", "PT", "10m", "PT10", "P1DT", "1:2", 600, None])
def test_bad_durations(text: object) -> None:
    with pytest.raises(InvalidInput):
        parse_duration(text, "rewardWaitTime")


def test_personalizer_arguments_become_scorer_arguments() -> None:
    assert (
        scorer_arguments(
            "--cb_explore_adf --epsilon 0.2 --power_t 0 -l 0.001 --cb_type mtr -q ::", "a"
        )
        == "--cb_adf --power_t 0 --learning_rate 0.001 --cb_type mtr --quadratic ::"
    )
    assert scorer_arguments("--cb_explore_adf --squarecb --gamma_scale=10 -qua -l0.5", "a") == (
        "--cb_adf --quadratic ua --learning_rate 0.5"
    )
    assert with_learning_rate("--cb_explore_adf --learning_rate=0.5 -l0.01 -q ::", 0.1) == (
        "--cb_explore_adf --quadratic :: -l 0.1"  # every spelling of the old rate is gone
    )


@pytest.mark.parametrize(
    "arguments",
    [
        "--cb 4",
        "-q ::",  # no --cb_adf
        "--cb_explore_adf -d data.txt",
        "--cb_explore_adf -i model",
        "--cb_explore_adf -ppredictions.txt",  # a short option glued to its path
        "--cb_explore_adf --predictions=predictions.txt",
        "--cb_explore_adf --readable_model x",
        "--cb_explore_adf --dump_json_weights_experimental weights.json",
        "--cb_explore_adf some/file",  # VW would read a bare word as its data file
        "--cb_explore_adf --audit",
        "--cb_explore_adf --span_server host",
        "--cb_explore_adf -b 32",
        "--cb_explore_adf --cb_type magic",
        "--cb_explore_adf -l fast",
        "--cb_explore_adf --epsilon",
        "--cb_explore_adf --noconstant=1",
    ],
)
def test_arguments_outside_the_allowlist_are_refused(arguments: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        scorer_arguments(arguments, "arguments")
    assert refused.value.field == "arguments"


def _loop(mode: str = "Online", exploration: float = 0.3) -> Loop:
    scorer = VWScorer(ARGS)
    example = ["shared |u a", "0:-1:0.5 |i x=1", "|i x=2"]
    for _ in range(20):  # some preference, so the pmfs are not uniform
        scorer.learn(example)
    service = ServiceConfiguration(exploration=exploration, learning_mode=mode)
    return Loop("default", service, PolicyConfiguration(), scorer, 1, 0.0)


def test_multislot_propensities_are_the_sampling_probabilities() -> None:
    """For a fixed request, the frequency of each (slot 1, slot 2) pair matches the product of
    the logged probabilities: slot 2's is conditional on slot 1's pick."""
    loop = _loop()
    actions = ["|i x=1", "|i x=2", "|i x=3", "|i x=4"]
    slots = [SlotRequest("a", "", (), 0), SlotRequest("b", "|s big", (3,), 1)]
    rng = np.random.default_rng(0)
    counts: dict[tuple[int, int], int] = {}
    logged: dict[tuple[int, int], float] = {}
    n = 4000
    for _ in range(n):
        event, pmfs = loop.rank("|u a", ["p", "q", "r", "s"], actions, slots, rng)
        first, second = event.slots
        pair = (first.chosen, second.chosen)
        counts[pair] = counts.get(pair, 0) + 1
        logged[pair] = first.propensity * second.propensity
        assert second.chosen not in (first.chosen, 3)  # not repeated, not excluded
        assert pmfs[1][first.chosen] == 0 and pmfs[1][3] == 0
        assert math.isclose(pmfs[0].sum(), 1) and math.isclose(pmfs[1].sum(), 1)
        assert first.propensity == pmfs[0][first.chosen]
    assert math.isclose(sum(logged[p] for p in logged), 1.0, rel_tol=1e-9)  # every pair seen
    pairs = sorted(counts)
    observed = [counts[p] for p in pairs]
    expected = [logged[p] * n for p in pairs]
    assert chisquare(observed, expected).pvalue > 0.001


def test_apprentice_and_logging_only_pick_the_baseline() -> None:
    for mode in ("Apprentice", "LoggingOnly"):
        loop = _loop(mode)
        slots = [SlotRequest("a", "", (), 2), SlotRequest("b", "", (), 2)]
        event, _ = loop.rank(
            "", ["p", "q", "r"], ["|i x=1", "|i x=2", "|i x=3"], slots, np.random.default_rng(0)
        )
        assert [s.chosen for s in event.slots] == [2, 0]  # slot b's baseline was taken
        assert [s.propensity for s in event.slots] == [1.0, 1.0]


def _engine(tmp_path: Path) -> Engine:
    engine = open_engine(f"sqlite:///{tmp_path / 'pz.db'}")
    Loops(engine, ["default"]).refresh()  # the loop's rows and its first (empty) model
    return engine


def _log(engine: Engine, n: int, *, activated: bool = True, reward: float | None = 1.0) -> None:
    loop = _loop()
    rng = np.random.default_rng(1)
    with engine.begin() as conn:
        for _ in range(n):
            event, _ = loop.rank(
                "|u a", ["p", "q"], ["|i x=1", "|i x=2"], [SlotRequest(None, "", (), 0)], rng
            )
            pk = store.insert_event(
                conn,
                loop="default",
                event_id=uuid.uuid4().hex,
                activated=activated,
                model_version=1,
                payload=event.to_bytes(),
                created_at=0.0,
            )
            if reward is not None:
                store.add_rewards(conn, pk, [(0, reward)])


def test_learner_learns_each_activated_event_once_across_restarts(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    hourly = ServiceConfiguration(reward_wait_seconds=0, model_export_seconds=3600)
    _log(engine, 30)
    _log(engine, 5, activated=False)  # deferred and never activated: never learned
    first = LoopLearner(engine, "default")
    assert first.step(hourly) == 35 and first.pending == 30
    # A crash here loses what was learned since the checkpoint, and the progress with it.
    again = LoopLearner(engine, "default")
    assert again.step(hourly) == 35
    again.checkpoint()
    with engine.connect() as conn:
        latest = store.latest_model(conn, "default")
        assert latest is not None
        assert latest.examples == 30 and latest.learned_through == 35
    _log(engine, 10, reward=None)  # no reward: the loop's default reward
    again.step(ServiceConfiguration(reward_wait_seconds=0, model_export_seconds=0))
    with engine.connect() as conn:
        latest = store.latest_model(conn, "default")
        assert latest is not None and latest.examples == 40 and latest.learned_through == 45
    engine.dispose()


def test_an_import_or_reset_restarts_the_lineage(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    service = ServiceConfiguration(reward_wait_seconds=0, model_export_seconds=3600)
    _log(engine, 10)
    learner = LoopLearner(engine, "default")
    learner.step(service)  # learned in memory, not yet checkpointed
    with engine.begin() as conn:
        reset = new_model(conn, "default", PolicyConfiguration(), "reset")
    assert learner.checkpoint() is None  # the reset wins; this learner's work is dropped
    _log(engine, 3)
    learner.step(service)
    version = learner.checkpoint()
    with engine.connect() as conn:
        latest = store.latest_model(conn, "default")
    assert latest is not None and latest.version == version
    assert latest.examples == 3 and learner.parent == version and reset < version
    engine.dispose()


def _logged_world(engine: Engine, exploration: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` events of a loop that prefers the first of two actions, exploring with
    ``exploration``; a click is worth 1, with probability 0.2 on the first action and 0.7 on
    the second. Returns the rewards and whether the first action was shown."""
    loop = _loop(exploration=exploration)
    rng = np.random.default_rng(2)
    shown_first, rewards = [], []
    with engine.begin() as conn:
        for i in range(n):
            event, _ = loop.rank(
                "|u a", ["p", "q"], ["|i x=1", "|i x=2"], [SlotRequest(None, "", (), 0)], rng
            )
            reward = float(rng.random() < (0.2 if event.slots[0].chosen == 0 else 0.7))
            pk = store.insert_event(
                conn,
                loop="default",
                event_id=f"e{i}",
                activated=True,
                model_version=1,
                payload=event.to_bytes(),
                created_at=1120.0 + i,  # not on a 5-minute boundary
            )
            store.add_rewards(conn, pk, [(0, reward)])
            shown_first.append(event.slots[0].chosen == 0)
            rewards.append(reward)
    return np.array(rewards), np.array(shown_first)


def test_evaluation_estimates_recover_the_true_values(tmp_path: Path) -> None:
    """The logger mostly shows the worse action. Reweighted, the log still gives the baseline
    (always the first action: truly 0.2) and random (truly 0.45) inside their 95% intervals,
    and tells them apart; the online policy's value is the log's own mean reward."""
    engine = _engine(tmp_path)
    rewards, shown_first = _logged_world(engine, exploration=0.5, n=1000)
    assert shown_first.mean() > 0.6  # the logger's preference is the wrong one
    request = {"start": 1120.0, "end": 1e6, "policies": [], "optimize": False}
    result = evaluate(engine, "default", request, ServiceConfiguration(), PolicyConfiguration())
    estimates = {p["name"]: p["estimate"] for p in result["policies"]}
    for name, truth in (("Baseline", 0.2), ("Random", 0.45)):
        assert estimates[name]["ci_low"] < truth < estimates[name]["ci_high"], name
    assert estimates["Online"]["value"] == pytest.approx(rewards.mean())
    assert estimates["Baseline"]["value"] == pytest.approx(rewards[shown_first].mean())
    assert estimates["Baseline"]["ci_high"] < estimates["Random"]["ci_low"]

    # The time series starts at the bucket holding startTime: every event counts.
    row = {
        "id": "e",
        "created_at": 0.0,
        "status": "succeeded",
        "request": {"name": "e", **request},
        "result": result,
    }
    body = render(row, start=1120.0, end=1e6, interval_minutes=5)
    online = next(p for p in body["policyResults"] if p["name"] == "Online")
    assert online["summary"][-1]["ipsEstimatorDenominator"] == 1000  # expanding: all of them
    assert online["totalSummary"]["ipsEstimatorDenominator"] == 1000
    assert body["content"]["value"][0]["timeseries"]["data"][-1]["expectedReward"] == (
        pytest.approx(rewards.mean())
    )
    engine.dispose()


def test_custom_policies_are_scored_before_they_learn_each_event(tmp_path: Path) -> None:
    """Progressive validation: an untrained model ties and picks the first action, so on the
    first event a custom policy (no exploration) gives the first action probability 1."""
    engine = _engine(tmp_path)
    _logged_world(engine, exploration=1.0, n=50)
    log = read_log(engine, "default", 0.0, 1e6, ServiceConfiguration())
    target = learned_probabilities(log, ARGS, exploration=0.0)
    first = log.events[0].slots[0].chosen
    assert target[0] == (1.0 if first == 0 else 0.0)
    engine.dispose()


def test_event_payload_round_trips() -> None:
    event, _ = _loop().rank(
        "|u a",
        ["p", "q"],
        ["|i x=1", ""],
        [SlotRequest(None, "", (1,), 0)],
        np.random.default_rng(0),
    )
    again = Event.from_bytes(event.to_bytes())
    assert again == event
    assert again.example(0, 1.0, every_action=True) == ["shared | |u a", "0:-1:1 |i x=1"]
