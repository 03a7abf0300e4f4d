"""Replay over a real decision log (real server in-process, real VW, SQLite)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from slatebandit.config import Settings
from slatebandit.logging import open_engine
from slatebandit.logging.schema import decisions, rewards, slots
from slatebandit.policies.learner import Learner
from slatebandit.replay import ReplayOptions, parse_target, replay
from slatebandit.retrieval.demo import demo_items
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog, serve_with_clicks


def _serve(settings: Settings, n: int, offset: int) -> None:
    serve_with_clicks(settings, n, offset, k=5)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, float]:
    """300 decisions by an untrained model, then 300 by version 1, trained on the first."""
    tmp_path = tmp_path_factory.mktemp("replay")
    settings = make_settings(
        tmp_path, learner="off", reward_wait=0, epsilon=0.3, promotion="always"
    )
    seed_catalog(settings.database_url, list(demo_items(200, seed=5)))
    _serve(settings, 300, 0)
    engine = open_engine(settings.database_url)
    learner = Learner(engine, settings, holder="test")
    learner.run_due(now=time.time() + 3600)
    assert learner.checkpoint() == 1
    engine.dispose()
    second_phase = time.time()
    _serve(settings, 300, 300)
    return settings, second_phase


def _run(settings: Settings, **options: object) -> dict:  # type: ignore[type-arg]
    engine = open_engine(settings.database_url)
    try:
        opts = ReplayOptions(**{"bootstrap": 200, "until": 4e9, **options})  # type: ignore[arg-type]
        return replay(engine, settings, opts).to_dict()
    finally:
        engine.dispose()


def _estimates(report: dict, policy: str) -> dict[str, dict]:  # type: ignore[type-arg]
    entry = next(p for p in report["policies"] if p["policy"] == policy)
    return {e["estimator"]: e for e in entry["estimates"]}


def test_the_logging_policy_replays_to_its_own_click_rate(logged) -> None:  # type: ignore[no-untyped-def]
    settings, _ = logged
    report = _run(settings, policies=("logged",))
    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        n_slots = conn.execute(select(func.count()).select_from(slots)).scalar_one()
        clicks = conn.execute(select(func.count()).select_from(rewards)).scalar_one()
        n_decisions = conn.execute(select(func.count()).select_from(decisions)).scalar_one()
    engine.dispose()
    assert report["n_decisions"] == n_decisions == 600
    assert report["n_slots"] == n_slots
    estimates = _estimates(report, "logged")
    for name in ("ips", "snips", "dr", "cascade-ips", "cascade-dr"):
        assert estimates[name]["value"] == pytest.approx(clicks / n_slots, rel=1e-9), name
        assert estimates[name]["max_weight"] == 1.0
    assert estimates["ips"]["ci_low"] < clicks / n_slots < estimates["ips"]["ci_high"]


def test_replaying_the_serving_model_recomputes_every_logged_propensity(logged) -> None:  # type: ignore[no-untyped-def]
    """Decisions served by version 1, replayed with vw@1: every weight is 1 (to rounding), so
    the features, candidates, layout and exploration were all recomputed as served."""
    settings, second_phase = logged
    report = _run(settings, policies=("vw@1",), since=second_phase)
    assert report["n_decisions"] == 300
    ips = _estimates(report, "vw@1")["ips"]
    assert ips["max_weight"] == pytest.approx(1.0, rel=1e-6)
    assert ips["ess"] == pytest.approx(report["n_slots"], rel=1e-6)
    assert not [w for w in report["warnings"] if w.startswith("vw@1")]


def test_a_trained_model_beats_random_and_random_gets_a_support_warning(logged) -> None:  # type: ignore[no-untyped-def]
    settings, second_phase = logged
    report = _run(settings, policies=("random", "vw@1", "popular"), since=second_phase)
    vw, random = _estimates(report, "vw@1"), _estimates(report, "random")
    assert vw["dr"]["value"] > random["dr"]["value"]
    assert any(w.startswith("random:") and "poor support" in w for w in report["warnings"])
    assert set(_estimates(report, "popular")) == {
        "ips",
        "snips",
        "dm",
        "dr",
        "cascade-ips",
        "cascade-dr",
    }


def test_the_same_seed_gives_the_same_report(logged) -> None:  # type: ignore[no-untyped-def]
    settings, _ = logged
    first = _run(settings, policies=("random", "popular"), seed=3)
    again = _run(settings, policies=("random", "popular"), seed=3)
    other = _run(settings, policies=("random", "popular"), seed=4)
    assert first == again
    assert first != other


def test_a_vw_args_policy_trains_on_the_earlier_half_and_is_evaluated_on_the_rest(logged) -> None:  # type: ignore[no-untyped-def]
    settings, _ = logged
    report = _run(settings, policies=("vw:--cb_adf --cb_type mtr -q ui -q ci", "logged"))
    assert report["n_decisions"] == 300
    assert report["window"]["trained_through_decision"] == 300
    assert any("trained on the first 50%" in w for w in report["warnings"])
    assert {p["policy"] for p in report["policies"]} == {
        "vw:--cb_adf --cb_type mtr -q ui -q ci",
        "logged",
    }


def test_constant_rewards_give_exactly_that_value(tmp_path: Path) -> None:
    """No reward ever came and the default reward is 0.25: every estimator but plain IPS says
    0.25 for any policy (IPS is unbiased, not exact)."""
    settings = make_settings(tmp_path, learner="off", reward_wait=0, epsilon=0.3)
    seed_catalog(settings.database_url, list(demo_items(100, seed=6)))
    with TestClient(create_app(settings)) as client:
        for i in range(60):
            assert client.post("/v1/slates", json={"user_id": f"u{i}", "k": 4}).status_code == 200
    replayed = Settings.from_env({}, **{**settings.__dict__, "default_reward": 0.25})
    report = _run(replayed, policies=("random", "popular"))
    for policy in ("random", "popular"):
        for name, estimate in _estimates(report, policy).items():
            if name not in ("ips", "cascade-ips"):
                assert estimate["value"] == pytest.approx(0.25, rel=1e-9), (policy, name)


def test_bad_specs_and_options_are_refused_with_the_field(logged) -> None:  # type: ignore[no-untyped-def]
    from slatebandit.errors import InvalidInput, NotFound

    settings, _ = logged
    with pytest.raises(InvalidInput, match="expected random, popular"):
        _run(settings, policies=("greedy",))
    with pytest.raises(NotFound, match="no model version 99"):
        _run(settings, policies=("vw@99",))
    with pytest.raises(InvalidInput, match="unknown estimator"):
        _run(settings, policies=("random",), estimators=("ipw",))
    with pytest.raises(InvalidInput, match="VW rejected"):
        _run(settings, policies=("vw:--cb_adf --nonsense",))


def test_evaluations_over_http_match_the_library_and_check_input(logged) -> None:  # type: ignore[no-untyped-def]
    settings, _ = logged
    keyed = Settings.from_env({}, **{**settings.__dict__, "api_keys": "analyst:a-key,serve:s-key"})
    analyst = {"X-API-Key": "a-key"}
    body = {"policies": ["random", "logged"], "bootstrap": 200, "seed": 5, "until": 4e9}
    with TestClient(create_app(keyed)) as client:
        assert client.post("/v1/evaluations", json=body).status_code == 401
        assert (
            client.post("/v1/evaluations", json=body, headers={"X-API-Key": "s-key"}).status_code
            == 403
        )
        for bad, status, field in [
            ({**body, "policies": ["greedy"]}, 400, "policy"),
            ({**body, "policies": []}, 400, "policies"),
            ({**body, "policies": ["vw@99"]}, 404, "policy"),
            ({**body, "estimators": ["ipw"]}, 400, "estimators"),
            ({**body, "since": "last tuesday"}, 400, "since"),
            ({**body, "bootstrap": -1}, 400, "bootstrap"),
            ({**body, "clip": 0}, 400, "clip"),
        ]:
            answer = client.post("/v1/evaluations", json=bad, headers=analyst)
            assert answer.status_code == status, (bad, answer.json())
            assert answer.json()["error"]["field"] == field
        started = client.post("/v1/evaluations", json=body, headers=analyst)
        assert started.status_code == 202
        location = started.headers["location"]
        client.portal.call(client.app_state["recommender"].evaluations.wait)  # type: ignore[union-attr]
        done = client.get(location, headers=analyst).json()
        missing = client.get("/v1/evaluations/nope", headers=analyst)
        listed = client.get("/v1/evaluations", headers=analyst).json()["evaluations"]
    assert [e["id"] for e in listed] == [location.rsplit("/", 1)[1]]  # the bad ones never ran
    assert listed[0]["status"] == "done" and listed[0]["result"] is None  # read it by id
    assert listed[0]["request"]["policies"] == ["random", "logged"]
    assert missing.status_code == 404
    assert done["status"] == "done", done
    assert done["progress"]["phase"] == "finished"
    expected = _run(settings, policies=("random", "logged"), bootstrap=200, seed=5)
    assert done["result"] == json.loads(json.dumps(expected))
    assert set(done["result"]) >= {"n_decisions", "n_slots", "policies", "warnings"}


@pytest.mark.parametrize("aggregation", ["sum", "earliest"])
def test_replay_reads_each_slots_reward_as_the_learner_does(
    tmp_path: Path, aggregation: str
) -> None:
    """Several rewards on one slot (click, then purchase), none on others: replay's vectorised
    reader and the learner's ``slot_reward`` agree under both aggregations."""
    from slatebandit.logging.learning import due_decisions, slot_reward
    from slatebandit.logging.objective import SlotReward
    from slatebandit.replay.log import Window, read_shown

    settings = make_settings(tmp_path, learner="off", reward_wait=0)
    seed_catalog(settings.database_url, list(demo_items(100, seed=7)))
    with TestClient(create_app(settings)) as client:
        for i in range(40):
            body = client.post("/v1/slates", json={"user_id": f"u{i}", "k": 4}).json()
            for n, item in enumerate(body["items"][: i % 3]):
                for kind, value in (("click", 1.0), ("purchase", 5.0 + n)):
                    reward = {"event_id": body["event_id"], "item_id": item["item_id"]}
                    client.post("/v1/rewards", json={**reward, "type": kind, "reward": value})
    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        due = due_decisions(conn, 0, 4e9, 1000)
    expected = [
        slot_reward(d.rewards.get(item, []), aggregation, -0.5)
        for d in due
        for _, item, _ in d.slots
    ]
    rule = SlotReward("reward", aggregation, -0.5)
    shown = list(read_shown(engine, Window(), reward=rule, chunk=7))
    engine.dispose()
    assert np.concatenate([s.reward for s in shown]).tolist() == expected
    assert sum(s.decisions for s in shown) == 40


def test_empty_slates_and_bad_times_do_not_break_replay(tmp_path: Path) -> None:
    """A filter that matches nothing logs a decision with no slot; replay (DM and DR too)
    still runs. Non-finite times are refused, on the CLI's path and the API's."""
    from slatebandit.errors import InvalidInput
    from slatebandit.replay.evaluate import parse_time

    settings = make_settings(tmp_path, learner="off", reward_wait=0)
    seed_catalog(settings.database_url, list(demo_items(50, seed=8)))
    with TestClient(create_app(settings)) as client:
        for i in range(5):
            body = {"user_id": f"u{i}", "k": 3, "filters": {"brand": ["no such brand"]}}
            assert client.post("/v1/slates", json=body).json()["items"] == []
        client.post("/v1/slates", json={"user_id": "x", "k": 3})
        bad = {"policies": ["random"], "since": "nan"}
        answer = client.post("/v1/evaluations", json=bad)
        assert answer.status_code == 400 and answer.json()["error"]["field"] == "since"
    report = _run(settings, policies=("random",), estimators=("dm", "dr", "ips"))
    assert report["n_decisions"] == 6 and report["n_slots"] == 3
    for bad_time in ("nan", "inf", float("nan"), "-Infinity"):
        with pytest.raises(InvalidInput, match="finite"):
            parse_time(bad_time, "until")


def test_evaluations_beyond_the_queue_are_refused_with_429(logged) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from slatebandit.errors import TooManyRequests
    from slatebandit.recommender.evaluations import QUEUED, RUNNING, Evaluations

    settings, _ = logged
    engine = open_engine(settings.database_url)
    evaluations = Evaluations(engine, settings)
    loop = asyncio.new_event_loop()
    try:
        evaluations.tasks = {loop.create_future() for _ in range(RUNNING + QUEUED - 1)}
        evaluations.check_room()  # one more fits
        evaluations.tasks.add(loop.create_future())
        with pytest.raises(TooManyRequests):
            evaluations.check_room()
    finally:
        loop.close()
        evaluations.pool.shutdown()
        engine.dispose()


def test_replay_targets_are_the_policies_that_serve() -> None:
    """One Random, one Popular: replay asks the serving policy objects for their pmfs."""
    from slatebandit import policies
    from slatebandit.replay import targets

    random_target = parse_target("random", None)  # type: ignore[arg-type]
    popular_target = parse_target("popular", None)  # type: ignore[arg-type]
    assert isinstance(random_target, targets.PolicyTarget)
    assert isinstance(random_target.policy, policies.Random)
    assert isinstance(popular_target, targets.PolicyTarget)
    assert isinstance(popular_target.policy, policies.Popular)
    assert (random_target.spec, popular_target.spec) == ("random", "popular")
    assert not random_target.uses_exploration and popular_target.uses_exploration
    assert not hasattr(targets, "Random") or targets.Random is policies.Random


def test_payloads_decode_column_by_column_as_one_payload_at_a_time() -> None:
    from slatebandit.logging import DecisionPayload
    from slatebandit.logging.records import pack
    from slatebandit.replay.payloads import Payloads

    rng = np.random.default_rng(8)
    written = []
    for width, layout in ((5, "eex"), (3, "ed"), (7, "e"), (1, "e")):
        written.append(
            DecisionPayload(
                context={"c": {"device": "mobile", "width": width}, "u": [], "p": []},
                candidate_revs=rng.integers(1, 2**31, width).astype(np.uint32),
                candidate_flags=rng.integers(0, 256, width).astype(np.uint8),
                candidate_dynamic=rng.integers(0, 256, width).astype(np.uint8),
                scores=np.zeros(width, dtype=np.float16),
                layout=layout,
                exploration={"kind": "epsilon", "param": 0.05},
                chosen=rng.choice(width, len(layout), replace=False).astype(np.uint16),
                feature_spec=4,
            )
        )
    columns = Payloads.decode([p.encode() for p in written])
    assert columns.revs.shape == (4, 7) and columns.chosen.shape == (4, 3)
    for row, payload in enumerate(written):
        n, k = len(payload.candidate_revs), len(payload.layout)
        assert columns.valid[row].sum() == n
        assert np.array_equal(columns.revs[row, :n], payload.candidate_revs)
        assert not columns.revs[row, n:].any()
        assert np.array_equal(columns.flags[row, :n], payload.candidate_flags)
        assert np.array_equal(columns.dynamic[row, :n], payload.candidate_dynamic)
        assert "".join(columns.layout[row]) == payload.layout
        assert np.array_equal(columns.chosen[row, :k], payload.chosen)
        assert columns.explorations[row] == payload.exploration
        assert columns.specs[row] == 4
        assert columns.contexts[row] == payload.context  # packed on its own, unpacked here
        assert DecisionPayload.decode(payload.encode()).context == payload.context
    old = pack({**DecisionPayload.fields(written[0].encode()), "v": 2, "ctx": {"c": {"a": 1}}})
    assert Payloads.decode([old, written[1].encode()]).contexts[0] == {"c": {"a": 1}}
    with pytest.raises(ValueError, match="payload version 9"):
        Payloads.decode([written[0].encode(), pack({"v": 9})])


def test_replay_in_slices_over_processes_equals_one_pass(logged, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The evaluation pass in three spawned-process slices gives the one-process estimates,
    intervals and counts (the bootstrap's draws depend on the decision, and the accumulators
    merge; only the order of float additions differs). A trained target stays in one pass."""
    from slatebandit.replay import evaluate as evaluate_module

    settings, _ = logged
    policies = ("random", "popular", "vw@1", "logged")
    estimators = ("ips", "snips", "dr", "cascade-dr")
    options = ReplayOptions(policies=policies, estimators=estimators, bootstrap=200, until=4e9)
    engine = open_engine(settings.database_url)
    try:
        one = replay(engine, settings, options).to_dict()
        monkeypatch.setattr(evaluate_module, "SHARD_DECISIONS", 100)  # 600 decisions: 3 slices
        calls: list[int] = []
        sharded = evaluate_module.evaluate_sharded

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(args[6])  # the slices it was asked for
            return sharded(*args, **kwargs)

        monkeypatch.setattr(evaluate_module, "evaluate_sharded", counted)
        seen: list[tuple[str, int, int]] = []
        sliced = replay(engine, settings, options, lambda *p: seen.append(p), processes=3).to_dict()
    finally:
        engine.dispose()
    assert calls == [3]
    assert sliced["n_decisions"] == one["n_decisions"] == 600
    assert sliced["n_slots"] == one["n_slots"] and sliced["warnings"] == one["warnings"]
    for a, b in zip(one["policies"], sliced["policies"], strict=True):
        assert a["policy"] == b["policy"]
        for x, y in zip(a["estimates"], b["estimates"], strict=True):
            for key in ("value", "ci_low", "ci_high", "ess", "max_weight", "se"):
                assert y[key] == pytest.approx(x[key], rel=1e-9, abs=1e-12), (a["policy"], key)
    replayed = [done for phase, done, _ in seen if phase == "replay"]
    assert replayed[-1] == 600 and replayed == sorted(replayed)  # every slice's progress


def test_a_trained_target_keeps_the_pass_in_one_process(logged, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from slatebandit.replay import evaluate as evaluate_module

    settings, _ = logged
    monkeypatch.setattr(evaluate_module, "SHARD_DECISIONS", 100)
    monkeypatch.setattr(evaluate_module, "evaluate_sharded", None)  # would fail if called
    options = ReplayOptions(policies=("vw:--cb_adf --cb_type mtr",), bootstrap=50, until=4e9)
    engine = open_engine(settings.database_url)
    try:
        report = replay(engine, settings, options, processes=3).to_dict()
    finally:
        engine.dispose()
    assert report["n_decisions"] > 0
