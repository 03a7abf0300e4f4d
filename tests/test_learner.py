"""The learner with real VW and SQLite: reward join, exactly-once across a kill -9, the lease,
late rewards, and that learning moves scores the way the rewards point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select
from starlette.testclient import TestClient

from slatebandit.bandit import SharedFeatures, dynamic_tokens
from slatebandit.logging import models, open_engine
from slatebandit.logging.learning import due_decisions, late_rewards, revision_snapshots
from slatebandit.logging.schema import decisions, slots
from slatebandit.policies.learner import Learner, slot_features
from slatebandit.retrieval import ItemStore
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
    settings = make_settings(
        tmp_path, learner="off", reward_wait=0, learn_batch=7, promotion="always"
    )
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
    settings = make_settings(tmp_path, learner="off", reward_wait=0, promotion="always")
    seed_catalog(settings.database_url, small_catalog[:200])
    _serve_slates(settings, 60)
    n_slots, last = _counts(settings.database_url)

    env = {k: v for k, v in os.environ.items() if not k.startswith("SLATEBANDIT_")}
    env.update(
        SLATEBANDIT_REWARD_WAIT="0",
        SLATEBANDIT_LEARN_BATCH="5",
        SLATEBANDIT_CHECKPOINT_EVERY="1",  # a checkpoint after every batch
        SLATEBANDIT_PROMOTION="always",  # learn every slot: none held out for the gate
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
    settings = make_settings(
        tmp_path, learner="off", reward_wait=0, epsilon=0.5, promotion="always"
    )
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


def test_the_learner_sees_each_shown_item_as_the_scorer_did(tmp_path, small_catalog) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, learner="off", promotion="always")
    seed_catalog(settings.database_url, small_catalog[:100])
    with TestClient(create_app(settings)) as client:
        client.post("/v1/events", json={"user_id": "a", "item_id": "sku-0000004", "type": "click"})
        body = client.post("/v1/slates", json={"user_id": "a", "k": 6}).json()
        # Two shown items change after the decision: the log must still give the old features.
        by_id = {item.item_id: item for item in small_catalog}
        for shown in body["items"][:2]:
            changed = {**by_id[shown["item_id"]].model_dump(), "brand": "Renamed", "price": 999.0}
            assert client.put("/v1/items", json=[changed]).status_code == 200
    engine = open_engine(settings.database_url)
    store = ItemStore.open(engine, None)
    with engine.connect() as conn:
        due = due_decisions(conn, 0, time.time() + LATER, 10)
        revs = [int(r) for r in due[0].payload.candidate_revs]
        snapshots = revision_snapshots(conn, revs)
    engine.dispose()
    payload = due[0].payload
    branches = []
    for slot, key, _ in due[0].slots:
        features = slot_features(payload, slot, snapshots)
        candidate = int(payload.chosen[slot])
        assert features.startswith(f"k{key} ") and features.endswith(
            dynamic_tokens(int(payload.candidate_dynamic[candidate]))
        )
        unchanged = int(payload.candidate_revs[candidate]) == store.catalog.rev[key]
        branches.append(unchanged)
        # Unchanged items read as today; changed ones as the logged revision, not as today.
        assert features.startswith(store.catalog.features[key] + " ") == unchanged
    assert branches == [False, False, True, True, True, True]


def test_a_trained_model_ranks_never_rewarded_items_by_what_they_share(
    tmp_path, small_catalog
) -> None:  # type: ignore[no-untyped-def]
    """Rewards go to one category only; afterwards that category's items that were never
    rewarded (most never shown) outscore the rest: the model learned the category, not ids."""
    settings = make_settings(
        tmp_path, learner="off", reward_wait=0, epsilon=0.6, promotion="always"
    )
    seed_catalog(settings.database_url, small_catalog)
    liked = "women/dresses"
    rewarded = set()
    with TestClient(create_app(settings)) as client:
        for i in range(200):
            body = client.post("/v1/slates", json={"user_id": f"u{i}", "k": 8}).json()
            for item in body["items"]:
                category = next(x.category for x in small_catalog if x.item_id == item["item_id"])
                if category == liked:
                    rewarded.add(item["item_id"])
                    reward = {"event_id": body["event_id"], "item_id": item["item_id"]}
                    client.post("/v1/rewards", json=reward)
    engine = open_engine(settings.database_url)
    learner = Learner(engine, settings, holder="test")
    learner.run_due(now=time.time() + LATER)
    store = ItemStore.open(engine, None)
    engine.dispose()
    catalog = store.catalog
    unseen = [x.item_id for x in small_catalog if x.item_id not in rewarded]
    keys = [catalog.key_of[i] for i in unseen]
    actions = [f"{catalog.features[k]} {dynamic_tokens(0)}" for k in keys]
    scores = learner.scorer.score(SharedFeatures.build({}, at=0), actions)
    same = [s for i, s in zip(unseen, scores, strict=True) if _category(small_catalog, i) == liked]
    other = [s for i, s in zip(unseen, scores, strict=True) if _category(small_catalog, i) != liked]
    assert rewarded and same and other
    assert sum(same) / len(same) > sum(other) / len(other) + 0.1


def _category(catalog, item_id: str) -> str:  # type: ignore[no-untyped-def]
    return next(x.category for x in catalog if x.item_id == item_id)


def test_due_decisions_stop_at_the_first_not_due_id_instead_of_skipping_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two workers' clocks: decision 1 reads later than decision 2. Taking 2 while 1 is not
    due would move the learner's progress past 1 for good."""
    import numpy as np

    from slatebandit.items import Item
    from slatebandit.logging import DecisionPayload, DecisionRecord, upsert_items

    engine = open_engine(f"sqlite:///{tmp_path / 'd.db'}")
    payload = DecisionPayload(
        context={"c": {}, "u": []},
        candidate_revs=np.array([1], dtype=np.uint32),
        candidate_flags=np.zeros(1, dtype=np.uint8),
        candidate_dynamic=np.zeros(1, dtype=np.uint8),
        scores=np.zeros(1, dtype=np.float16),
        layout="",
        exploration={"kind": "epsilon", "param": 0.1},
        chosen=np.zeros(0, dtype=np.uint16),
        feature_spec=2,
    ).encode()
    with engine.begin() as conn:
        upsert_items(conn, [Item(item_id="x")])
        DecisionRecord.write_many(
            conn,
            [
                DecisionRecord("a" * 32, 100.0, "u", "vw", 0, payload, ()),
                DecisionRecord("b" * 32, 50.0, "u", "vw", 0, payload, ()),
            ],
        )
    with engine.connect() as conn:
        assert due_decisions(conn, 0, until=75.0, limit=10) == []
        assert [d.decision_id for d in due_decisions(conn, 0, until=100.0, limit=10)] == [1, 2]
    engine.dispose()


def test_late_rewards_counts_what_a_scan_of_every_version_counts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The range join against the definition: a reward is late if any checkpoint that learned
    its decision was made before it (seeded random versions and rewards)."""
    import numpy as np
    from sqlalchemy import insert

    from slatebandit.logging.schema import decisions, items, model_versions, rewards

    rng = np.random.default_rng(7)
    engine = open_engine(f"sqlite:///{tmp_path / 'late.db'}")
    with engine.begin() as conn:
        conn.execute(insert(items).values(item_id="a", rev=1, created_at=0.0, updated_at=0.0))
        for i in range(1, 301):
            conn.execute(
                insert(decisions).values(
                    id=i,
                    event_id=f"e{i}",
                    created_at=float(i),
                    user_id="u",
                    policy="vw",
                    model_version=0,
                    payload=b"-",
                )
            )
        versions = [(int(rng.integers(0, 300)), float(rng.uniform(0, 400))) for _ in range(25)]
        for v, (through, at) in enumerate(versions, start=1):
            conn.execute(
                insert(model_versions).values(
                    version=v,
                    vw_args="",
                    feature_spec=1,
                    examples=0,
                    learned_through=through,
                    created_at=at,
                    model=b"",
                )
            )
        got = [(int(rng.integers(1, 301)), float(rng.uniform(0, 400))) for _ in range(500)]
        for decision, at in got:
            conn.execute(
                insert(rewards).values(
                    decision_id=decision, item_key=1, type=f"t{at}", reward=1.0, created_at=at
                )
            )
        counted = late_rewards(conn)
    engine.dispose()
    expected = sum(
        any(through >= decision and made < at for through, made in versions) for decision, at in got
    )
    assert counted == expected and 0 < expected < len(got)


def test_the_idle_learner_writes_at_normal_priority(tmp_path: Path) -> None:
    """A SCHED_IDLE learner holding SQLite's write lock, without the CPU to finish, kept the
    serving workers' commits waiting up to a second in the soak: its writes run at normal
    priority, from the first write statement until the connection goes back to the pool, and
    its reads stay idle."""
    import threading

    from sqlalchemy import event, text

    from slatebandit.learning.loop import write_at_normal_priority

    engine = open_engine(f"sqlite:///{tmp_path / 'w.db'}")
    write_at_normal_priority(engine)
    seen: list[tuple[str, int]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def note(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        seen.append((statement.split()[0].lower(), os.sched_getscheduler(0)))

    after: list[int] = []

    def learner_thread() -> None:  # the policy is per thread on Linux: keep pytest's as it is
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        with engine.connect() as conn:
            conn.execute(text("select count(*) from items")).scalar()
        with engine.begin() as conn:
            conn.execute(text("select count(*) from items")).scalar()
            conn.execute(text("create table if not exists t (x integer)"))
            conn.execute(text("insert into t values (1)"))
            conn.execute(text("update t set x = 2"))
        after.append(os.sched_getscheduler(0))

    thread = threading.Thread(target=learner_thread)
    thread.start()
    thread.join()
    engine.dispose()
    policies = [(verb, policy) for verb, policy in seen if verb in {"select", "insert", "update"}]
    assert policies == [
        ("select", os.SCHED_IDLE),
        ("select", os.SCHED_IDLE),
        ("insert", os.SCHED_OTHER),
        ("update", os.SCHED_OTHER),
    ]
    assert after == [os.SCHED_IDLE]


def test_a_lease_is_written_only_to_take_it_or_renew_it_after_a_third(tmp_path: Path) -> None:
    """Every process asks for the learner lease every second; on SQLite each write waits for
    the one write lock, so asking must not write unless something changes."""
    from sqlalchemy import event

    from slatebandit.logging.learning import take_lease
    from slatebandit.logging.schema import leases

    engine = open_engine(f"sqlite:///{tmp_path / 'l.db'}")
    writes: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def note(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if not statement.lstrip().lower().startswith(("select", "savepoint", "release")):
            writes.append(statement.split()[0].lower())

    def ask(holder: str, now: float) -> bool:
        with engine.begin() as conn:
            return take_lease(conn, "learner", holder, now, ttl=30.0)

    assert ask("a", 1000.0) and writes == ["update", "insert"]  # taken: no row yet
    writes.clear()
    assert ask("a", 1009.0) and not ask("b", 1009.0) and writes == []  # held: only reads
    assert ask("a", 1011.0) and writes == ["update"]  # a third has run: renewed to 1041
    writes.clear()
    assert not ask("b", 1040.0) and writes == []
    assert ask("b", 1041.5) and writes == ["update"]  # expired: taken over
    with engine.connect() as conn:
        row = conn.execute(select(leases.c.holder, leases.c.expires_at)).one()
    engine.dispose()
    assert tuple(row) == ("b", 1071.5)


def test_each_checkpoint_prunes_the_models_nothing_will_serve(tmp_path, small_catalog) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, learner="off", reward_wait=0, learn_batch=10, keep_models=2)
    seed_catalog(settings.database_url, small_catalog[:200])
    _serve_slates(settings, 40)
    engine = open_engine(settings.database_url)
    learner = Learner(engine, settings, holder="test")
    made = []
    for _ in range(4):  # four checkpoints of ten decisions each, none promoted (gated)
        learner.step(now=time.time() + LATER)
        made.append(learner.checkpoint())
    with engine.connect() as conn:
        held = [models.has_model(conn, version) for version in made]
    engine.dispose()
    assert held == [False, False, True, True]  # the newest two keep their model
