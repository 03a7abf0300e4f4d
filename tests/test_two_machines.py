"""Two machines on one PostgreSQL: two `slatebandit serve --workers 2`, each with its own data
directory and spool, and one learner between them (B's embedded learner: A runs none).

What one machine is told, the other serves: an event posted to A shapes B's next slate, a
model promoted on A serves on B, an item put on B serves on A. Then PostgreSQL (a cluster of
the test's own) stops under light load: both keep answering, into their spools. A reward for
a decision in A's spool is posted to B, during the outage and after it (when B has shipped
and A, killed with SIGKILL while it held its spool, has not): both are accepted. Once A is
restarted and has shipped, every acknowledged decision, reward and event is stored exactly
once, and the rewards posted to B are joined to A's decisions, not late for the learner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import create_engine, func, select

from benchmarks.pg_cluster import Cluster
from slatebandit.logging.schema import (
    decisions,
    events,
    items,
    model_versions,
    rewards,
    spool_orphans,
)
from slatebandit.logging.schema import machines as machine_rows
from tests.conftest import ServeProcess
from tests.test_outage import Load

SETTINGS = {
    "seed": "7",
    "reward_wait": "0",
    "promotion": "manual",  # versions are promoted by hand here: on A, over HTTP
    "checkpoint_seconds": "1",
    "learner_lease_seconds": "2",
    "db_probe_seconds": "0.5",
    "model_poll_seconds": "0.5",
    "catalog_poll_seconds": "0.5",
}
A_SETTINGS = {**SETTINGS, "learner": "off"}
B_SETTINGS = {**SETTINGS, "learner": "embedded"}  # the one learner
CATEGORY = "twomachines/test"
NEW_ITEMS = ["tm-1", "tm-2", "tm-3"]
ONLY_NEW = {"k": 3, "filters": {"category": [CATEGORY]}}


def until(what: str, check: Callable[[], Any], seconds: float = 60) -> Any:
    """``check()``'s first truthy answer, asked until ``seconds`` pass (another process's
    progress: there is nothing to await but its answers)."""
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)
    return found


def slate(base: str, user: str, **extra: Any) -> dict:  # type: ignore[type-arg]
    answer = httpx.post(f"{base}/v1/slates", json={"user_id": user, **extra}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def shown(body: dict) -> set[str]:  # type: ignore[type-arg]
    return {item["item_id"] for item in body["items"]}


@pytest.fixture
def machines(tmp_path: Path, cluster: Cluster) -> Iterator[dict[str, ServeProcess]]:
    """A (which loads the demo catalog) and B, started one after the other; stopped after."""
    started: dict[str, ServeProcess] = {}
    try:
        demo = ("--demo", "--demo-items", "300")
        started["a"] = ServeProcess(_data_dir(tmp_path, "a"), cluster.url, A_SETTINGS, *demo)
        started["b"] = ServeProcess(_data_dir(tmp_path, "b"), cluster.url, B_SETTINGS)
        yield started
    finally:
        for server in started.values():
            server.stop()


def _data_dir(tmp_path: Path, machine: str) -> Path:
    (tmp_path / machine).mkdir(exist_ok=True)  # its server logs go beside the data directory
    return tmp_path / machine / "var"


def _cross_machine_checks(a: ServeProcess, b: ServeProcess) -> None:
    # A catalog change on B serves on A within a catalog poll.
    new = [{"item_id": i, "title": i, "category": CATEGORY, "price": 10.0} for i in NEW_ITEMS]
    assert httpx.put(f"{b.base}/v1/items", json=new, timeout=30).status_code == 200
    # (every worker of each: several answers in a row)
    for base in (a.base, b.base):
        until("B's new items served on every worker", partial(_shows_all, base))

    # An event on A shapes B's next slate: a purchase on A, and B no longer shows the item.
    assert shown(slate(b.base, "shopper", **ONLY_NEW)) == set(NEW_ITEMS)
    event = {"user_id": "shopper", "item_id": "tm-1", "type": "purchase"}
    answer = httpx.post(f"{a.base}/v1/events", json=event, timeout=30)
    assert answer.status_code == 202 and answer.json()["logged"] == "database"
    for _ in range(4):  # each worker of B
        assert shown(slate(b.base, "shopper", **ONLY_NEW)) == {"tm-2", "tm-3"}

    # A model promoted on A serves on B: B's learner checkpoints what both machines logged.
    for i in range(20):
        body = slate(a.base if i % 2 else b.base, f"warm{i}", k=4)
        reward = {"event_id": body["event_id"], "item_id": body["items"][0]["item_id"]}
        assert httpx.post(f"{b.base}/v1/rewards", json=reward, timeout=30).status_code == 202
    versions = until("a checkpoint of B's learner", lambda: _versions(a.base), seconds=90)
    version = max(v["version"] for v in versions)
    promoted = httpx.post(f"{a.base}/v1/models/{version}/promote", timeout=30)
    assert promoted.status_code == 200 and promoted.json()["serving"] == version
    # Every slate B answers, whichever worker answers, once each has polled the champion.
    until(
        f"version {version} served on B",
        lambda: all(slate(b.base, "promoted", k=4)["model_version"] == version for _ in range(8)),
    )


def _shows(base: str, user: str) -> set[str]:
    """The items of a slate of the new category (none while the category is unknown there)."""
    answer = httpx.post(f"{base}/v1/slates", json={"user_id": user, **ONLY_NEW}, timeout=30)
    return shown(answer.json()) if answer.status_code == 200 else set()


def _shows_all(base: str) -> bool:
    return all(_shows(base, "cat") == set(NEW_ITEMS) for _ in range(6))


def _versions(base: str) -> list[dict]:  # type: ignore[type-arg]
    return httpx.get(f"{base}/v1/models", timeout=30).json()["versions"]  # type: ignore[no-any-return]


def _post_events(base: str, machine: str, numbers: range, acked: list) -> None:  # type: ignore[type-arg]
    """One event each for shoppers of their own (so each is counted by its user)."""
    for i in numbers:
        user = f"ev-{machine}-{i}"
        event = {"user_id": user, "item_id": "tm-2", "type": "view"}
        answer = httpx.post(f"{base}/v1/events", json=event, timeout=30)
        assert answer.status_code == 202, answer.text
        acked.append((user, answer.json()["logged"]))


def _reward(base: str, event_id: str, item_id: str) -> dict:  # type: ignore[type-arg]
    reward = {"event_id": event_id, "item_id": item_id}
    answer = httpx.post(f"{base}/v1/rewards", json=reward, timeout=30)
    assert answer.status_code == 202, answer.text
    return answer.json()  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.postgres
def test_two_machines_share_one_database_through_an_outage_and_a_kill(
    tmp_path: Path, machines: dict[str, ServeProcess], cluster: Cluster
) -> None:
    a, b = machines["a"], machines["b"]
    _cross_machine_checks(a, b)

    # Light load on both: two clients each, a slate then a reward for its first item.
    loads = {"a": Load(), "b": Load()}
    stop, killed = threading.Event(), {"a": threading.Event(), "b": threading.Event()}
    threads = {
        m: [
            threading.Thread(target=loads[m].send, args=(server.base, u, stop, killed[m]))
            for u in (10 * n, 10 * n + 1)
        ]
        for n, (m, server) in enumerate((("a", a), ("b", b)))
    }
    for thread in threads["a"] + threads["b"]:
        thread.start()
    acked_events: list[tuple[str, str]] = []  # each shopper's one event, and where it went
    cross = []  # rewards posted to B for decisions in A's spool: (event id, item id)
    try:
        for load in loads.values():
            load.wait(lambda load=load: load.logged("database") >= 20)  # type: ignore[misc]
        _post_events(a.base, "a", range(0, 3), acked_events)

        # PostgreSQL stops: both machines keep answering, into their spools.
        cluster.stop()
        for load in loads.values():
            load.wait(lambda load=load: load.logged("spool") >= 20)  # type: ignore[misc]
        _post_events(a.base, "a", range(3, 6), acked_events)
        _post_events(b.base, "b", range(0, 3), acked_events)
        # A reward for a decision in A's spool, posted to B during the outage: B spools it,
        # and parks it when B ships, for A's decision to find.
        during = slate(a.base, "cross-during")
        assert during["logged"] == "spool"
        cross.append((during["event_id"], during["items"][1]["item_id"]))
        assert _reward(b.base, *cross[-1])["logged"] == "spool"
        after = slate(a.base, "cross-after")  # rewarded on B once B has shipped, below
        assert after["logged"] == "spool"

        # A dies with SIGKILL while it holds its spool; PostgreSQL comes back; B ships.
        killed["a"].set()
        a.kill()
        for thread in threads["a"]:
            thread.join(timeout=60)
        cluster.start()
        b.wait_health(lambda h: h["status"] == "ok" and h["spool"]["segments"] == 0, times=6)

        # B spools nothing now; A's spool waits for A. The registry says so: B accepts a
        # reward for a decision in A's spool, parked in the database, no 404.
        cross.append((after["event_id"], after["items"][1]["item_id"]))
        parked = _reward(b.base, *cross[-1])
        assert parked["logged"] == "parked" and parked["duplicate"] is None
        _post_events(b.base, "b", range(3, 6), acked_events)

        # A restarts on its data directory and ships what the killed run spooled.
        machines["a"] = ServeProcess(_data_dir(tmp_path, "a"), cluster.url, A_SETTINGS)
        machines["a"].wait_health(
            lambda h: h["status"] == "ok" and h["spool"]["segments"] == 0, times=6
        )
    finally:
        stop.set()
        for thread in threads["a"] + threads["b"]:
            thread.join(timeout=60)

    for load in loads.values():
        assert load.failures == [] and load.logged("none") == 0
        assert load.logged("spool") >= 20
    _check_stored(cluster.url, loads, acked_events, cross)
    _check_on_time(cluster.url, after["event_id"])


def _check_stored(url: str, loads: dict[str, Load], acked_events: list, cross: list) -> None:  # type: ignore[type-arg]
    engine = create_engine(url)
    per_decision = select(decisions.c.event_id, func.count()).group_by(decisions.c.event_id)
    per_reward = (
        select(decisions.c.event_id, items.c.item_id, func.count())
        .join_from(rewards, decisions, rewards.c.decision_id == decisions.c.id)
        .join(items, items.c.key == rewards.c.item_key)
        .group_by(decisions.c.event_id, items.c.item_id)
    )
    per_user = select(events.c.user_id, func.count()).group_by(events.c.user_id)
    with engine.connect() as conn:
        stored_decisions = {e: n for e, n in conn.execute(per_decision)}
        stored_rewards = {(e, i): n for e, i, n in conn.execute(per_reward)}
        stored_events = {user: n for user, n in conn.execute(per_user)}
        registered = conn.execute(select(func.count()).select_from(machine_rows)).scalar_one()
        waiting = conn.execute(select(func.count()).select_from(spool_orphans)).scalar_one()
    engine.dispose()
    # Every acknowledged decision, reward and event, spooled or not, is stored exactly once.
    for load in loads.values():
        assert all(stored_decisions.get(event_id) == 1 for event_id in load.slates)
        assert all(stored_rewards.get((e, i)) == 1 for e, i, _ in load.rewards)
    assert all(stored_events.get(user) == 1 for user, _ in acked_events)
    assert {logged for _, logged in acked_events} == {"database", "spool"}
    # The rewards posted to B for decisions in A's spool are joined to them, once each.
    for event_id, item_id in cross:
        assert stored_decisions.get(event_id) == 1 and stored_rewards.get((event_id, item_id)) == 1
    assert waiting == 0 and registered == 2


def _check_on_time(url: str, event_id: str) -> None:
    """The reward parked for ``event_id`` was stored before any checkpoint learned its
    decision: the learner (B's, paused while B spooled) counts it, not a late reward."""
    engine = create_engine(url)
    with engine.connect() as conn:
        decision_id = conn.execute(
            select(decisions.c.id).where(decisions.c.event_id == event_id)
        ).scalar_one()
        stored_at = conn.execute(
            select(func.max(rewards.c.created_at)).where(rewards.c.decision_id == decision_id)
        ).scalar_one()

        def first_learned() -> float | None:
            return conn.execute(  # type: ignore[no-any-return]
                select(func.min(model_versions.c.created_at)).where(
                    model_versions.c.learned_through >= decision_id
                )
            ).scalar_one()

        learned_at = until("B's learner past the parked reward's decision", first_learned)
    engine.dispose()
    assert stored_at < learned_at
