"""Database outage: a real PostgreSQL stopped and started under slate and reward load.

The server (`slatebandit serve --workers 2`, embedded learner) runs against a PostgreSQL
cluster of its own, made with the machine's `initdb` in a temporary directory, so stopping it
cannot disturb any other test. While it is down every slate is still served (logged "spool")
and every reward acknowledged; `/healthz` says degraded. Once it is back, the spool ships and
serving logs to the database again. A second outage ends with the whole server killed with
SIGKILL; the next server ships what the dead workers spooled. Then every acknowledged decision
and reward is in the database exactly once, and the learner has learned each slot once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import pytest

from benchmarks.pg_cluster import Cluster
from tests.conftest import ServeProcess
from tests.test_crash import _checkpoints, stored

CLIENTS = 4
SETTINGS = {
    "reward_wait": "0",
    "promotion": "always",
    "checkpoint_seconds": "1",
    "learner_lease_seconds": "2",
    "db_probe_seconds": "0.5",
}


@dataclass
class Load:
    """What the server answered, shared by the client threads."""

    slates: dict[str, str] = field(default_factory=dict)  # event id -> where it was logged
    rewards: list[tuple[str, str, str]] = field(default_factory=list)  # event, item, logged
    failures: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def logged(self, where: str) -> int:
        # Under the condition's lock (an RLock: ``wait``'s predicates hold it already), as the
        # client threads add slates: counting while one adds raised "dictionary changed size".
        with self.changed:
            return sum(1 for logged in self.slates.values() if logged == where)

    def wait(self, until: Callable[[], bool]) -> None:
        with self.changed:
            assert self.changed.wait_for(until, timeout=180), "the load stalled"

    def send(self, base: str, user: int, stop: threading.Event, killed: threading.Event) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            while not stop.is_set():
                try:
                    slate = client.post("/v1/slates", json={"user_id": f"u{user}", "k": 4})
                    body = slate.json()
                    if slate.status_code != 200:
                        self.failures.append(f"slate {slate.status_code}: {body}")
                        continue
                    with self.changed:
                        self.slates[body["event_id"]] = body["logged"]
                        self.changed.notify_all()
                    pick = body["items"][0]["item_id"]
                    reward = client.post(
                        "/v1/rewards", json={"event_id": body["event_id"], "item_id": pick}
                    )
                    if reward.status_code != 202:
                        self.failures.append(f"reward {reward.status_code}: {reward.json()}")
                        continue
                    with self.changed:
                        self.rewards.append((body["event_id"], pick, reward.json()["logged"]))
                except httpx.TransportError as exc:
                    if not killed.is_set():
                        self.failures.append(f"transport: {exc!r}")
                    return


class Server(ServeProcess):
    def __init__(self, data_dir: Path, url: str, *extra: str) -> None:
        super().__init__(data_dir, url, SETTINGS, *extra)


def _loaded(server: Server, load: Load) -> tuple[threading.Event, threading.Event, list]:  # type: ignore[type-arg]
    stop, killed = threading.Event(), threading.Event()
    threads = [
        threading.Thread(target=load.send, args=(server.base, i, stop, killed))
        for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    return stop, killed, threads


@pytest.mark.slow
@pytest.mark.postgres
def test_postgresql_stopped_under_load_loses_and_duplicates_nothing(
    tmp_path: Path, cluster: Cluster
) -> None:
    data_dir = tmp_path / "var"
    load = Load()
    server = Server(data_dir, cluster.url, "--demo", "--demo-items", "2000")
    stop, killed, threads = _loaded(server, load)
    try:
        # First outage: PostgreSQL stops mid-load, then comes back.
        load.wait(lambda: load.logged("database") >= 300)
        # The learner has started (a spawned child, slow on a loaded box) and checkpointed
        # before the first outage, so the end can show that it went on through both.
        load.wait(lambda: _checkpoints(cluster.url) >= 1)
        cluster.stop()
        spooled_before = load.logged("spool")
        load.wait(lambda: load.logged("spool") >= spooled_before + 300)
        server.wait_health(lambda h: h["status"] == "degraded" and h["database"] != "ok")
        cluster.start()
        server.wait_health(lambda h: h["status"] == "ok" and h["spool"]["segments"] == 0, times=6)
        after = load.logged("database")
        load.wait(lambda: load.logged("database") >= after + 300)  # logged directly again

        # Second outage: the whole server is killed with SIGKILL while it spools.
        cluster.stop()
        spooled_before = load.logged("spool")
        load.wait(lambda: load.logged("spool") >= spooled_before + 200)
        killed.set()
        server.kill()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        server.stop()
    cluster.start()
    spool = data_dir / "spool"
    assert any(spool.glob("*.spool"))  # the dead workers' segments wait for the next server

    server = Server(data_dir, cluster.url)
    try:
        server.wait_health(lambda h: h["status"] == "ok" and h["spool"]["segments"] == 0)
        assert (
            httpx.post(server.base + "/v1/slates", json={"user_id": "after"}).json()["logged"]
            == "database"
        )
    finally:
        server.stop()

    assert load.failures == []  # no request failed, through both outages
    assert load.logged("none") == 0 and load.logged("spool") >= 500
    assert {logged for _, _, logged in load.rewards} == {"database", "spool"}
    found = stored(cluster.url)
    # Every acknowledged decision and reward, spooled or not, is stored: at least once here,
    # at most once by the unique event id and (decision, item, type).
    assert all(found.decisions.get(event_id) == 1 for event_id in load.slates)
    assert all(found.rewards.get(event_id) == 1 for event_id, _, _ in load.rewards)
    # The learner went on through both outages and learned each slot once.
    assert found.learned_through > 0 and found.examples == found.learned_slots
