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
from slatebandit.personalizer.configuration import (
    PolicyConfiguration,
    ServiceConfiguration,
    format_duration,
    parse_duration,
    scorer_arguments,
)
from slatebandit.personalizer.evaluation import evaluate
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
        == "--cb_adf --power_t 0 -l 0.001 --cb_type mtr -q ::"
    )
    assert scorer_arguments("--cb_explore_adf --squarecb --gamma_scale 10 -q ua", "a") == (
        "--cb_adf -q ua"
    )
    refused_arguments = (
        "--cb 4",
        "--cb_explore_adf -d data.txt",
        "-q ::",
        "--cb_explore_adf -i m",
        "--cb_explore_adf -ppredictions.txt",  # a short option glued to its path
        "--cb_explore_adf --predictions=predictions.txt",
        "--cb_explore_adf --readable_model x",
    )
    for refused in refused_arguments:
        with pytest.raises(InvalidInput):
            scorer_arguments(refused, "arguments")


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


def test_evaluation_estimates_match_a_hand_computed_log(tmp_path: Path) -> None:
    """A uniform logger over two actions: the baseline (always the first action) is worth the
    mean reward of the events that showed it; random and online are worth the overall mean."""
    engine = _engine(tmp_path)
    loop = _loop(exploration=1.0)
    rng = np.random.default_rng(2)
    shown_first, rewards = [], []
    with engine.begin() as conn:
        for i in range(400):
            event, _ = loop.rank(
                "|u a", ["p", "q"], ["|i x=1", "|i x=2"], [SlotRequest(None, "", (), 0)], rng
            )
            reward = float(rng.random() < (0.7 if event.slots[0].chosen == 0 else 0.2))
            pk = store.insert_event(
                conn,
                loop="default",
                event_id=f"e{i}",
                activated=True,
                model_version=1,
                payload=event.to_bytes(),
                created_at=100.0 + i,
            )
            store.add_rewards(conn, pk, [(0, reward)])
            shown_first.append(event.slots[0].chosen == 0)
            rewards.append(reward)
    request = {"start": 0.0, "end": 1e6, "policies": [], "optimize": False}
    result = evaluate(engine, "default", request, ServiceConfiguration(), PolicyConfiguration())
    values = {p["name"]: p["estimate"]["value"] for p in result["policies"]}
    r, first = np.array(rewards), np.array(shown_first)
    assert values["Baseline"] == pytest.approx(r[first].mean())
    assert values["Random"] == pytest.approx(r.mean())
    assert values["Online"] == pytest.approx(r.mean())
    assert result["events"] == 400
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
