from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx2 as httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from benchmarks.pg_cluster import Cluster, initdb, private_cluster
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


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One whole HTTP response from a raw socket: its head (lowercased) and its body, read
    until Content-Length bytes came (head and body may arrive in separate segments)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the server closed the connection after {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    head = head.lower()
    length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the server closed the connection mid-body: {body!r}")
        body += chunk
    return head, body


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


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL server of the test's own (``benchmarks.pg_cluster``): stopping it disturbs
    no other test."""
    if initdb() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL's initdb is required in CI")
        pytest.skip("PostgreSQL's server binaries are not installed")
    with private_cluster() as cluster:
        yield cluster


class ServeProcess:
    """`slatebandit serve --workers 2` on a free loopback port, in a process group of its own,
    with ``settings`` as its only SLATEBANDIT_* variables; its stderr goes to a log file
    beside ``data_dir``."""

    def __init__(self, data_dir: Path, url: str, settings: Mapping[str, str], *extra: str) -> None:
        from tests.test_e2e import _free_port, _wait_healthy

        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLATEBANDIT_")}
        env.update({f"SLATEBANDIT_{k.upper()}": v for k, v in settings.items()})
        self.log = (data_dir.parent / f"serve-{self.port}.log").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slatebandit.cli",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                "2",
                "--data-dir",
                str(data_dir),
                "--db",
                url,
                *extra,
            ],  # fmt: skip
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,  # its workers share its process group: one kill takes all
        )
        try:
            _wait_healthy(self.process, self.base)
        except AssertionError as exc:
            raise AssertionError(self.tail()) from exc

    def tail(self) -> str:
        return Path(self.log.name).read_text()[-4000:]

    def health(self) -> dict:  # type: ignore[type-arg]
        return httpx.get(self.base + "/healthz", timeout=10).json()  # type: ignore[no-any-return]

    def wait_health(self, until: Callable[[dict], bool], times: int = 1) -> None:  # type: ignore[type-arg]
        """Poll /healthz until ``until`` holds on ``times`` answers in a row (the two workers
        answer in turn, so several in a row are likely to have heard from both)."""
        in_a_row = 0
        for _ in range(1200):
            in_a_row = in_a_row + 1 if until(self.health()) else 0
            if in_a_row >= times:
                return
            threading.Event().wait(0.1)  # polling a process we do not control
        raise AssertionError(f"/healthz never matched: {self.health()}\n{self.tail()}")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=120)
        self.log.close()
