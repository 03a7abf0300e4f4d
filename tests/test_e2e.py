"""End to end: `slatebandit serve` under a real uvicorn on a loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from sqlalchemy import create_engine, select

from slatebandit.logging.schema import decisions, rewards


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(data_dir: Path, port: int, *extra: str, **settings: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLATEBANDIT_")}
    env["SLATEBANDIT_SEED"] = "5"
    env.update({f"SLATEBANDIT_{name.upper()}": value for name, value in settings.items()})
    command = [
        sys.executable,
        "-m",
        "slatebandit.cli",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *extra,
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_healthy(server: subprocess.Popen[bytes], base: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(
                server.stderr.read().decode() if server.stderr else "server exited"
            )
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling a process we do not control; nothing to await
    raise AssertionError("server did not become healthy")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    port = _free_port()
    server = _start(tmp_path / "var", port, "--demo", "--demo-items", "2000")
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(server, base)
        yield base, tmp_path / "var", server
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)


@pytest.mark.slow
def test_demo_server_serves_logs_and_survives_kill_9(served, tmp_path) -> None:  # type: ignore[no-untyped-def]
    base, data_dir, server = served
    with httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/healthz").json()["items"] == 2000
        acknowledged = []
        for i in range(20):
            body = client.post("/v1/slates", json={"user_id": f"user{i % 4}", "k": 10}).json()
            assert len(body["items"]) == 10
            reward = client.post(
                "/v1/rewards",
                json={"event_id": body["event_id"], "item_id": body["items"][0]["item_id"]},
            )
            assert reward.status_code == 202
            acknowledged.append(body["event_id"])
        assert (
            client.post(
                "/v1/events", json={"user_id": "user0", "item_id": "sku-0000010", "type": "view"}
            ).status_code
            == 202
        )

    server.send_signal(signal.SIGKILL)  # no shutdown: only what was committed may remain
    server.wait(timeout=10)
    engine = create_engine(f"sqlite:///{data_dir / 'slatebandit.db'}")
    with engine.connect() as conn:
        logged = set(conn.execute(select(decisions.c.event_id)).scalars())
        assert len(conn.execute(select(rewards)).all()) == 20
    engine.dispose()
    assert set(acknowledged) <= logged

    port = _free_port()  # a restart without --demo serves the catalog it has, from the saved index
    again = _start(data_dir, port)
    try:
        _wait_healthy(again, f"http://127.0.0.1:{port}")
        body = httpx.post(
            f"http://127.0.0.1:{port}/v1/slates", json={"user_id": "user0", "k": 5}
        ).json()
        assert len(body["items"]) == 5
    finally:
        again.send_signal(signal.SIGINT)
        again.wait(timeout=30)


def test_refuses_to_bind_beyond_loopback_without_keys(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLATEBANDIT_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "slatebandit.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--data-dir",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "SLATEBANDIT_API_KEYS" in result.stderr


@pytest.mark.slow
def test_the_embedded_learner_checkpoints_and_serving_swaps_the_model_in(tmp_path: Path) -> None:
    port = _free_port()
    server = _start(
        tmp_path / "var",
        port,
        "--demo",
        "--demo-items",
        "500",
        reward_wait="0",
        checkpoint_seconds="0.5",
        model_poll_seconds="0.5",
        promotion="always",  # the swap, not the release (tests/test_canary_serving.py)
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(server, base)
        with httpx.Client(base_url=base, timeout=10) as client:
            for i in range(30):
                body = client.post("/v1/slates", json={"user_id": f"u{i}", "k": 5}).json()
                shown = {"event_id": body["event_id"], "item_id": body["items"][0]["item_id"]}
                assert client.post("/v1/rewards", json=shown).status_code == 202
            # Learning runs beside serving: within a few seconds a checkpoint is promoted and
            # swapped in, and new decisions log the version that scored them.
            deadline = time.monotonic() + 30
            while client.get("/healthz").json()["model_version"] == 0:
                assert time.monotonic() < deadline, "no model version was swapped in"
                time.sleep(0.2)  # a background task of another process: nothing to await
            body = client.post("/v1/slates", json={"user_id": "late", "k": 5}).json()
            assert body["model_version"] >= 1
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
