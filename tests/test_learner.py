"""The learner with real VW and SQLite: reward join, exactly-once across a kill -9, the lease,
late rewards, and that learning moves scores the way the rewards point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from sqlalchemy import func, select
from starlette.testclient import TestClient

from slatebandit.logging import models, open_engine
from slatebandit.logging.learning import late_rewards
from slatebandit.logging.schema import decisions, slots
from slatebandit.policies.learner import Learner
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog

LATER = 3600.0  # "now" for the learner: every decision is past the reward wait


def _serve_slates(settings, n: int, reward_every: int = 3) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    bodies = []
    with TestClient(create_app(settings)) as client:
        for i in range(n):
            body = client.post("/v1/slates", json={"user_id": f"u{i % 7}", "k": 4}).json()
            if i % reward_every == 0:
                first = body["items"][0]["item_id"]
                reward = {"event_id": body["event_id"], "item_id": first, "type": "click"}
                assert client.post("/v1/rewards", json=reward).status_code == 202
            bodies.append(body)
    return bodies


def _counts(url: str) -> tuple[int, int]:
    engine = open_engine(url)
    with engine.connect() as conn:
        n_slots = conn.execute(select(func.count()).select_from(slots)).scalar_one()
        last = conn.execute(select(func.max(decisions.c.id))).scalar_one()
    engine.dispose()
    return n_slots, last


def test_every_shown_slot_is_learned_once_and_late_rewards_are_counted(
    tmp_path, small_catalog
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, learner="off", reward_wait=0, learn_batch=7)
    seed_catalog(settings.database_url, small_catalog[:200])
    bodies = _serve_slates(settings, 30)
    n_slots, last = _counts(settings.database_url)
    assert n_slots == 120

    engine = open_engine(settings.database_url)
    learner = Learner(engine, settings, holder="test")
    assert learner.hold_lease()
    assert not Learner(engine, settings, holder="rival").hold_lease()  # one learner at a time
    assert learner.run_due(now=time.time() + LATER) == 30
    version = learner.checkpoint()
    assert version is not None
    with engine.begin() as conn:
        info = models.get_version(conn, version)
        assert info is not None and (info.examples, info.learned_through) == (120, last)
        assert models.champion(conn) == version  # auto-promoted
    assert learner.run_due(now=time.time() + LATER) == 0  # nothing is learned twice

    with TestClient(create_app(settings)) as client:  # a reward after its slot was learned
        late = {"event_id": bodies[1]["event_id"], "item_id": bodies[1]["items"][0]["item_id"]}
        assert client.post("/v1/rewards", json=late).status_code == 202
    with engine.connect() as conn:
        assert late_rewards(conn) == 1
    engine.dispose()


def test_a_learner_killed_between_batches_neither_skips_nor_repeats(
    tmp_path, small_catalog
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, learner="off", reward_wait=0)
    seed_catalog(settings.database_url, small_catalog[:200])
    _serve_slates(settings, 60)
    n_slots, last = _counts(settings.database_url)

    env = {k: v for k, v in os.environ.items() if not k.startswith("SLATEBANDIT_")}
    env.update(
        SLATEBANDIT_REWARD_WAIT="0",
        SLATEBANDIT_LEARN_BATCH="5",
        SLATEBANDIT_CHECKPOINT_EVERY="1",  # a checkpoint after every batch
    )
    command = [sys.executable, "-m", "slatebandit.cli", "learn", "--db", settings.database_url]
    first = subprocess.Popen([*command, "--once"], env=env, stdout=subprocess.PIPE, text=True)
    assert first.stdout is not None
    seen = [first.stdout.readline() for _ in range(2)]
    assert all(line.startswith("checkpoint ") for line in seen), seen
    first.send_signal(signal.SIGKILL)  # mid-run: it may have learned more that is now lost
    first.wait(timeout=30)

    engine = open_engine(settings.database_url)
    with engine.begin() as conn:  # the dead learner's lease would block the next one for 30 s
        conn.exec_driver_sql("UPDATE leases SET expires_at = 0")
    engine.dispose()
    again = subprocess.run(
        [*command, "--once"], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr

    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        versions = models.list_versions(conn)
    engine.dispose()
    final = versions[-1]
    assert (final.examples, final.learned_through) == (n_slots, last)
    # One lineage, each checkpoint strictly further than its parent.
    by_version = {v.version: v for v in versions}
    for v in versions[1:]:
        parent = by_version[v.parent]  # type: ignore[index]
        assert v.learned_through > parent.learned_through and v.examples > parent.examples


def test_learning_moves_scores_towards_rewarded_items(tmp_path, small_catalog) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, learner="off", reward_wait=0, epsilon=0.5)
    seed_catalog(settings.database_url, small_catalog[:100])
    liked = set()
    with TestClient(create_app(settings)) as client:
        for i in range(150):
            body = client.post("/v1/slates", json={"user_id": f"u{i}", "k": 5}).json()
            for item in body["items"]:
                if item["item_id"].endswith(("1", "2")):  # the shopper likes these items
                    liked.add(item["item_id"])
                    reward = {"event_id": body["event_id"], "item_id": item["item_id"]}
                    client.post("/v1/rewards", json=reward)
    engine = open_engine(settings.database_url)
    learner = Learner(engine, settings, holder="test")
    learner.run_due(now=time.time() + LATER)
    learner.checkpoint()
    with TestClient(create_app(settings)) as client:
        body = client.post("/v1/slates", json={"user_id": "new", "k": 10}).json()
    engine.dispose()
    scores = {s["item_id"]: s["score"] for s in body["items"]}
    good = [v for k, v in scores.items() if k in liked]
    other = [v for k, v in scores.items() if k not in liked]
    assert body["model_version"] >= 1
    assert good and other and min(good) > max(other)
