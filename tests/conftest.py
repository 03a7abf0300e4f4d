from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from slatebandit.bandit import FEATURE_SPEC_VERSION, SharedFeatures, VWScorer, slot_example
from slatebandit.config import Settings
from slatebandit.items import Item
from slatebandit.logging import models, open_engine, upsert_items
from slatebandit.logging.learning import due_decisions, revision_snapshots
from slatebandit.policies.learner import slot_features
from slatebandit.retrieval.demo import demo_items
from slatebandit.server import create_app

PG_URL = os.environ.get(
    "SLATEBANDIT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values = {"data_dir": tmp_path / "var", "seed": 1234, **overrides}
    return Settings.from_env({}, **values)


def seed_catalog(url: str, items: list[Item]) -> None:
    engine = open_engine(url)
    with engine.begin() as conn:
        upsert_items(conn, items)
    engine.dispose()


@pytest.fixture
def small_catalog() -> list[Item]:
    return list(demo_items(600, seed=3))


@pytest.fixture
def settings(tmp_path: Path, small_catalog: list[Item]) -> Settings:
    settings = make_settings(tmp_path)
    seed_catalog(settings.database_url, small_catalog)
    return settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema per test; in CI an unreachable server fails, never skips."""
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_URL} is required in CI: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    schema = "t_" + uuid.uuid4().hex[:12]
    with admin.connect() as conn:
        conn.execute(text(f"create schema {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.connect() as conn:
        conn.execute(text(f"drop schema {schema} cascade"))
    admin.dispose()


def liked(item_id: str) -> bool:
    """The hidden preference of ``serve_with_clicks``: ids ending in 1, 2 or 3 get clicked."""
    return item_id.endswith(("1", "2", "3"))


def serve_with_clicks(settings: Settings, n: int, offset: int, k: int) -> None:
    """``n`` slates for users u{offset}.. through a real app, each liked item rewarded."""
    with TestClient(create_app(settings)) as client:
        for i in range(n):
            body = client.post("/v1/slates", json={"user_id": f"u{offset + i}", "k": k}).json()
            for item in body["items"]:
                if liked(item["item_id"]):
                    reward = {"event_id": body["event_id"], "item_id": item["item_id"]}
                    assert client.post("/v1/rewards", json=reward).status_code == 202


class _Uvicorn(uvicorn.Server):
    """uvicorn that tells the starting thread when it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = threading.Event()

    async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        await super().startup(sockets)
        self.listening.set()


@contextlib.contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    """A real uvicorn serving ``create_app(settings)`` on a free loopback port; yields its URL."""
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    server = _Uvicorn(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    if not server.listening.wait(timeout=120):
        raise AssertionError("uvicorn did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def train_version(
    settings: Settings,
    flip: bool,
    now: float | None = None,
    share: float = 1.0,
    passes: int = 1,
) -> int:
    """A model version trained on every non-held-out decision made by ``now`` (the first
    ``share`` of them, ``passes`` times), registered (not promoted); ``flip`` teaches the
    opposite of what shoppers clicked."""
    engine = open_engine(settings.database_url)
    scorer = VWScorer(settings.vw_args)
    with engine.connect() as conn:
        due = due_decisions(conn, 0, time.time() if now is None else now, 100_000)
        due = due[: max(1, int(len(due) * share))]
        revs = sorted({int(d.payload.candidate_revs[i]) for d in due for i in d.payload.chosen})
        snapshots = revision_snapshots(conn, revs)
    learned = 0
    for decision in due * passes:
        if decision.decision_id % settings.gate_holdout_every == 0:
            continue
        shared = SharedFeatures.from_log(decision.payload.context)
        for slot, key, propensity in decision.slots:
            reward = float(key in decision.rewards)
            reward = 1.0 - reward if flip else reward
            features = slot_features(decision.payload, slot, snapshots)
            scorer.learn(slot_example(shared, slot, features, reward, propensity))
            learned += 1
    with engine.begin() as conn:
        version = models.save_version(
            conn,
            parent=None,
            vw_args=scorer.args,
            feature_spec=FEATURE_SPEC_VERSION,
            examples=learned,
            learned_through=due[-1].decision_id,
            model=scorer.to_bytes(),
        )
    engine.dispose()
    return version
