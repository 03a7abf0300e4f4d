"""Safe updates: the promotion gate on held-out decisions, manual override, apprentice mode.

A real log (in-process server, real VW, SQLite) with a hidden preference: items whose id ends
in 1, 2 or 3 get clicked.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from slatebandit.config import Settings
from slatebandit.learning import LearnerProcess
from slatebandit.logging import models, open_engine
from slatebandit.logging.schema import decisions, slots
from slatebandit.policies.learner import Learner
from slatebandit.replay.gate import evaluate, judge
from slatebandit.replay.release import Release
from slatebandit.retrieval.demo import demo_items
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog, serve_with_clicks, train_version

LATER = 3600.0  # learn "an hour later": every reward is in


def _serve(settings: Settings, n: int, offset: int) -> None:
    serve_with_clicks(settings, n, offset, k=4)


def _version_from_log(settings: Settings, flip: bool) -> int:
    return train_version(settings, flip, now=time.time() + LATER)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tmp_path = tmp_path_factory.mktemp("gate")
    settings = make_settings(
        tmp_path,
        learner="off",
        reward_wait=0,
        epsilon=0.3,
        gate_holdout_every=4,
        gate_min_decisions=50,
        canary_share=0.2,  # the first version's canary needs 100 / 0.2 = 500 decisions learned
    )
    seed_catalog(settings.database_url, list(demo_items(150, seed=8)))
    _serve(settings, 600, 0)
    return settings


def test_the_learner_never_learns_held_out_decisions(log: Settings) -> None:
    engine = open_engine(log.database_url)
    learner = Learner(engine, log, holder="test")
    learner.run_due(now=time.time() + LATER)
    version = learner.checkpoint()
    Release(engine, log).turn(now=time.time() + LATER)  # a canary against the untrained model
    with engine.begin() as conn:  # the tests below need a champion
        models.promote(conn, version, reason="test: the first version")
    # ... and all its traffic: the canary, its champion changed, is superseded
    Release(engine, log).turn(now=time.time() + LATER)
    with engine.connect() as conn:
        held_out = conn.execute(
            select(func.count()).select_from(slots).where(slots.c.decision_id % 4 == 0)
        ).scalar_one()
        every = conn.execute(select(func.count()).select_from(slots)).scalar_one()
        info = models.get_version(conn, version)  # type: ignore[arg-type]
        verdicts = models.gate_verdicts(conn)
        champion = models.champion(conn)
    engine.dispose()
    assert 0 < held_out < every
    assert info is not None and info.examples == every - held_out
    assert champion == version  # the first version has no champion to beat
    assert [(v["version"], v["stage"], v["outcome"], v["reason"]) for v in verdicts] == [
        (version, "canary", "superseded", "canary superseded: the champion changed to 1 under it"),
        (version, "guard", "canary", "no champion yet: a canary against the untrained model"),
    ]


def test_a_worse_model_is_refused_and_a_better_one_promoted(log: Settings) -> None:
    """The margin rule. Epsilon 0.3 over ~150 candidates leaves a version that ranks unlike the
    champion a coverage near 0.3, which the default refuses to judge (next tests): here the
    gate is told to judge from 0.2 on."""
    log = Settings(**{**log.__dict__, "gate_min_coverage": 0.2})
    engine = open_engine(log.database_url)
    good = _version_from_log(log, flip=False)
    bad = _version_from_log(log, flip=True)
    with engine.begin() as conn:
        models.promote(conn, good, reason="test: the good model serves")
    _serve(log, 400, 1000)  # the gate replays decisions the champion scored
    refused = judge(engine, log, bad, now=time.time() + LATER)
    assert not refused.promoted and refused.champion == good
    assert refused.difference is not None and refused.high is not None and refused.high < 0
    assert "below" in refused.reason and f"on {refused.decisions} held-out" in refused.reason
    assert refused.coverage is not None and refused.coverage >= log.gate_min_coverage
    with engine.connect() as conn:
        assert models.champion(conn) == good
        verdict = models.gate_verdicts(conn, bad)[0]
    assert verdict["promoted"] is False and verdict["champion"] == good
    assert verdict["details"]["difference"] == pytest.approx(refused.difference)  # type: ignore[index]

    # The other way round: the good model beats a bad champion and is promoted.
    with engine.begin() as conn:
        models.promote(conn, bad, reason="test: a bad champion")
    _serve(log, 400, 2000)
    passed = judge(engine, log, good, now=time.time() + LATER)
    assert passed.promoted and passed.low is not None and passed.low > 0
    with engine.connect() as conn:
        assert models.champion(conn) == good
    # Manual promotion still overrides the gate, and rollback returns to the one before.
    with engine.begin() as conn:
        models.promote(conn, bad, reason="operator")
        assert models.champion(conn) == bad
        assert models.previous_champion(conn) == good
    engine.dispose()


def test_the_gate_replays_held_out_decisions_only(log: Settings) -> None:
    from slatebandit.replay import ReplayOptions, replay
    from slatebandit.replay.gate import held_out_window

    engine = open_engine(log.database_url)
    window = held_out_window(engine, log, now=time.time() + LATER)  # any logger
    report = replay(engine, log, ReplayOptions(("logged",), ("ips",), bootstrap=0), window=window)
    with engine.connect() as conn:
        held_out = conn.execute(
            select(func.count(), func.count(func.distinct(slots.c.decision_id))).where(
                slots.c.decision_id % 4 == 0
            )
        ).one()
    engine.dispose()
    assert (report.n_slots, report.n_decisions) == tuple(held_out)


def test_the_gate_refuses_to_judge_without_held_out_decisions(log: Settings) -> None:
    engine = open_engine(log.database_url)
    always = Settings(**{**log.__dict__, "promotion": "always"})
    verdict = evaluate(engine, always, 10_000)
    engine.dispose()
    assert not verdict.promoted and "no decisions were held out" in verdict.reason


def test_the_old_auto_promote_setting_is_refused_not_ignored() -> None:
    from slatebandit.errors import ConfigError

    with pytest.raises(ConfigError, match="SLATEBANDIT_PROMOTION"):
        Settings.from_env({"SLATEBANDIT_AUTO_PROMOTE": "false"})


def test_the_gate_waits_for_enough_held_out_decisions(log: Settings) -> None:
    settings = Settings(**{**log.__dict__, "gate_min_decisions": 10_000})
    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        champion = models.champion(conn)
        held_out = conn.execute(
            select(func.count()).where(
                decisions.c.id % 4 == 0, decisions.c.model_version == champion
            )
        ).scalar_one()
    version = _version_from_log(settings, flip=False)
    verdict = evaluate(engine, settings, version, now=time.time() + LATER)
    engine.dispose()
    assert not verdict.promoted and verdict.champion == champion
    assert held_out > 0
    assert verdict.reason.startswith(f"waiting: {held_out} held-out decisions of the champion")


def test_apprentice_learns_from_another_policy_and_reports_agreement(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, learner="off", reward_wait=0, policy="popular", learning_mode="apprentice"
    )
    seed_catalog(settings.database_url, list(demo_items(150, seed=8)))
    _serve(settings, 200, 0)
    engine = open_engine(settings.database_url)
    learner = Learner(engine, settings, holder="test")
    learner.run_due(now=time.time() + LATER)
    version = learner.checkpoint()
    with engine.connect() as conn:
        info = models.get_version(conn, version)  # type: ignore[arg-type]
        champion = models.champion(conn)
        served = set(conn.execute(select(decisions.c.policy)).scalars())
    assert served == {"popular"}
    assert champion is None  # an apprentice never serves
    assert info is not None and info.compared == 200 and 0 <= info.agreed <= 200
    assert 0 < info.agreed < 200  # a real comparison: neither always nor never the same
    with TestClient(create_app(settings)) as client:
        listed = client.get("/v1/models").json()
        assert listed["versions"][0]["agreement"] == pytest.approx(info.agreed / 200)
        assert (
            client.post("/v1/slates", json={"user_id": "x", "k": 3}).json()["policy"] == "popular"
        )
    engine.dispose()


def test_the_gate_does_not_judge_what_the_champions_logs_never_show(log: Settings) -> None:
    """Coverage: the challenger's mean importance weight on the champion's decisions. A
    champion that explores little (epsilon 0.01) almost never shows what an inverted model
    would, so the gate says it cannot judge instead of trusting a replay that did not see it."""
    settings = Settings(**{**log.__dict__, "epsilon": 0.01, "gate_holdout_every": 4})
    engine = open_engine(settings.database_url)
    good = _version_from_log(settings, flip=False)
    with engine.begin() as conn:
        models.promote(conn, good, reason="test: a greedy champion")
    _serve(settings, 300, 5000)
    bad = _version_from_log(settings, flip=True)
    verdict = judge(engine, settings, bad, now=time.time() + LATER)
    engine.dispose()
    assert not verdict.promoted and verdict.coverage is not None and verdict.coverage < 0.8
    assert verdict.reason.startswith("cannot judge: the champion's decisions cover")
    assert f"arm vw@{bad}" in verdict.reason


def test_the_embedded_learner_learns_and_releases_in_a_process_of_its_own(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        learner="off",
        reward_wait=0,
        checkpoint_every=1,
        gate_holdout_every=4,
        canary_share=0.5,  # a first canary once 100 / 0.5 = 200 decisions are learned
    )
    seed_catalog(settings.database_url, list(demo_items(150, seed=8)))
    _serve(settings, 220, 0)
    engine = open_engine(settings.database_url)
    learning = LearnerProcess(engine, settings, holder="test-process")
    learning.tick()  # renews the lease and starts a turn in the child
    assert learning.wait() > 0  # it learned, checkpointed, and the release started a canary
    child = learning.pid
    assert child is not None and os.sched_getscheduler(child) == os.SCHED_IDLE  # spare CPU only
    learning.stop()
    with engine.connect() as conn:
        verdicts = models.gate_verdicts(conn)
        champion = models.champion(conn)
    engine.dispose()
    assert child is not None and child != os.getpid()
    assert champion is None and verdicts and not verdicts[-1]["promoted"]
    assert verdicts[-1]["stage"] == "guard" and verdicts[-1]["outcome"] == "canary"
