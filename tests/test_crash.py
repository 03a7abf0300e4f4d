"""Crash safety: a real `slatebandit serve` under concurrent slate and reward load, killed with
SIGKILL five times at seeded moments and restarted, on SQLite and on PostgreSQL.

Afterwards every acknowledged decision and reward is in the database exactly once, the
learner's lineage has learned every slot up to its progress exactly once (a repeated or
skipped batch would break the count), and each restart loaded its index and model and served.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, func, select

from slatebandit.logging.schema import (
    decisions,
    leases,
    model_versions,
    promotions,
    rewards,
    slots,
)
from tests.test_e2e import _free_port, _start, _wait_healthy

KILLS = 5
WORKERS = 4  # client threads sending load
# Learn at once and checkpoint every second, so kills land between and inside checkpoints; a
# short lease lets each restart take learning over from the killed process within seconds.
SETTINGS = {
    "reward_wait": "0",
    "promotion": "always",
    "checkpoint_seconds": "1",
    "model_poll_seconds": "1",
    "learner_lease_seconds": "2",
}


@dataclass
class Load:
    """What the server acknowledged, shared by the client threads."""

    slates: list[str] = field(default_factory=list)
    rewards: list[tuple[str, str]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def send(self, base: str, user: int, stop: threading.Event) -> None:
        with httpx.Client(base_url=base, timeout=10) as client:
            while not stop.is_set():
                try:
                    slate = client.post("/v1/slates", json={"user_id": f"u{user}", "k": 4})
                    if slate.status_code != 200:
                        continue
                    body = slate.json()
                    with self.changed:
                        self.slates.append(body["event_id"])
                        self.changed.notify_all()
                    pick = body["items"][0]["item_id"]
                    reward = client.post(
                        "/v1/rewards", json={"event_id": body["event_id"], "item_id": pick}
                    )
                    if reward.status_code == 202:
                        with self.changed:
                            self.rewards.append((body["event_id"], pick))
                except httpx.TransportError:
                    return  # the server is gone: nothing more can be acknowledged


@dataclass
class Stored:
    """What a database holds, to check acknowledged records and the learner against."""

    decisions: dict[str, int]  # event id -> decision rows
    rewards: dict[str, int]  # event id -> reward rows
    learned_through: int  # the newest model version's progress...
    examples: int  # ...the examples it has learned...
    learned_slots: int  # ...and the shown slots up to that progress


def stored(url: str) -> Stored:
    engine = create_engine(url)
    with engine.connect() as conn:
        by_event = select(decisions.c.event_id, func.count()).group_by(decisions.c.event_id)
        rewarded = (
            select(decisions.c.event_id, func.count(rewards.c.id))
            .join(rewards, rewards.c.decision_id == decisions.c.id)
            .group_by(decisions.c.event_id)
        )
        latest = conn.execute(
            select(model_versions.c.examples, model_versions.c.learned_through)
            .order_by(model_versions.c.version.desc())
            .limit(1)
        ).one()
        learned_slots = conn.execute(
            select(func.count())
            .select_from(slots)
            .where(slots.c.decision_id <= latest.learned_through)
        ).scalar_one()
        found = Stored(
            dict(conn.execute(by_event).all()),  # type: ignore[arg-type]
            dict(conn.execute(rewarded).all()),  # type: ignore[arg-type]
            latest.learned_through,
            latest.examples,
            learned_slots,
        )
    engine.dispose()
    return found


def _checkpoints(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(model_versions)).scalar_one())
    except Exception:  # noqa: BLE001 - before the first start there are no tables yet
        return 0
    finally:
        engine.dispose()


def _champion(url: str) -> int | None:
    engine = create_engine(url)
    with engine.connect() as conn:
        query = select(promotions.c.version).order_by(promotions.c.id.desc()).limit(1)
        version = conn.execute(query).scalar()
    engine.dispose()
    return version


def _lease_holder(url: str) -> str:
    engine = create_engine(url)
    with engine.connect() as conn:
        holder = conn.execute(select(leases.c.holder).where(leases.c.name == "learner")).scalar()
    engine.dispose()
    return holder or ""


def _serve_and_kill(
    data_dir: Path, url: str, db: list[str], load: Load, target: int, demo: bool
) -> None:
    """One round: serve under load, and once ``target`` slates are acknowledged and the learner
    has checkpointed at least once in this round, kill the server with SIGKILL."""
    before = _checkpoints(url)
    port = _free_port()
    extra = ["--demo", "--demo-items", "2000"] if demo else []
    server = _start(data_dir, port, *db, *extra, **SETTINGS)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(server, base)
        assert httpx.get(base + "/healthz").json()["items"] == 2000  # the index loaded
        stop = threading.Event()
        threads = [threading.Thread(target=load.send, args=(base, i, stop)) for i in range(WORKERS)]
        for thread in threads:
            thread.start()
        with load.changed:  # kill once the server has acknowledged `target` slates in all
            load.changed.wait_for(lambda: len(load.slates) >= target, timeout=120)
        for _ in range(1200):  # and has checkpointed (another process's progress: polled)
            if _checkpoints(url) > before:
                break
            threading.Event().wait(0.1)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)


def _crash_and_check(tmp_path: Path, url: str, db: list[str]) -> None:
    data_dir = tmp_path / "var"
    load = Load()
    rng = np.random.default_rng(17)
    for round_ in range(KILLS):
        target = len(load.slates) + int(rng.integers(300, 700))  # a few seconds of load
        _serve_and_kill(data_dir, url, db, load, target, demo=round_ == 0)

    # A clean start after the last kill: the index and the champion load, and it serves.
    champion_at_kill = _champion(url)
    port = _free_port()
    server = _start(data_dir, port, *db, **SETTINGS)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(server, base)
        health = httpx.get(base + "/healthz").json()
        slate = httpx.post(base + "/v1/slates", json={"user_id": "after", "k": 4})
        assert slate.status_code == 200 and len(slate.json()["items"]) == 4
        # It takes learning over once the killed server's lease lapses (polled: another
        # process's progress), and its clean stop below hands the lease back.
        for _ in range(600):
            if _lease_holder(url).endswith(f"-{server.pid}"):
                break
            threading.Event().wait(0.1)
        assert _lease_holder(url).endswith(f"-{server.pid}")
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    champion = _champion(url)
    assert _checkpoints(url) >= KILLS  # the embedded learner learned in every round
    # The restart loaded the champion (or, having learned and promoted since, a newer one).
    assert champion_at_kill is not None and champion_at_kill <= health["model_version"]
    assert champion is not None and health["model_version"] <= champion
    learn = subprocess.run(
        [
            sys.executable,
            "-m",
            "slatebandit.cli",
            "learn",
            "--once",
            *db,
            "--data-dir",
            str(data_dir),
        ],
        env={**_env(), **{f"SLATEBANDIT_{k.upper()}": v for k, v in SETTINGS.items()}},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert learn.returncode == 0, learn.stderr

    found = stored(url)
    assert all(found.decisions.get(e) == 1 for e in load.slates)  # every acknowledged slate
    assert all(found.rewards.get(e) == 1 for e, _ in load.rewards)  # every acknowledged reward
    assert len(load.slates) >= KILLS * 300 and len(load.rewards) > 0
    # The lineage learned each slot up to its progress exactly once, across five kills.
    assert found.learned_through > 0 and found.examples == found.learned_slots


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SLATEBANDIT_")}


@pytest.mark.slow
def test_sigkill_under_load_loses_nothing_acknowledged_on_sqlite(tmp_path: Path) -> None:
    _crash_and_check(tmp_path, f"sqlite:///{tmp_path / 'var' / 'slatebandit.db'}", [])


@pytest.mark.slow
@pytest.mark.postgres
def test_sigkill_under_load_loses_nothing_acknowledged_on_postgresql(
    tmp_path: Path, pg_url: str
) -> None:
    _crash_and_check(tmp_path, pg_url, ["--db", pg_url])
