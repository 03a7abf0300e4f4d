"""Keep-alive connections end after SLATEBANDIT_KEEPALIVE_REQUESTS requests, so clients
reconnect to the idler worker: the middleware alone, then a real uvicorn closing the socket."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from slatebandit.config import Settings
from slatebandit.errors import ConfigError
from slatebandit.retrieval.demo import demo_items
from slatebandit.server import connections
from slatebandit.server.connections import RecycleConnections
from tests.conftest import live_server, make_settings, read_response, seed_catalog


async def _app(scope, receive, send):  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"a", b"b")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _answers(middleware: RecycleConnections, clients: list[tuple[str, int]]) -> list[bool]:
    """Whether each request, from these clients in turn, was answered with Connection: close."""
    closed = []
    for client in clients:
        heard: list[dict] = []  # type: ignore[type-arg]

        async def send(message, heard=heard):  # type: ignore[no-untyped-def]
            heard.append(message)

        scope = {"type": "http", "client": client, "path": "/"}
        asyncio.run(middleware(scope, None, send))  # type: ignore[arg-type]
        headers = heard[0]["headers"]
        assert headers[0] == (b"a", b"b")  # the app's own headers are kept
        assert heard[1]["body"] == b"{}"
        closed.append((b"connection", b"close") in headers)
    return closed


def test_every_nth_request_on_a_connection_closes_it() -> None:
    a, b = ("10.0.0.1", 5000), ("10.0.0.1", 5001)
    closed = _answers(RecycleConnections(_app, every=3), [a, a, b, a, b, a, a, a, b])
    # a: 1, 2, 3 (close), then a new connection from the same port: 1, 2, 3 (close)
    # b: 1, 2, 3 (close)
    assert closed == [False, False, False, True, False, False, False, True, True]


def test_zero_keeps_connections_open_and_one_closes_every_answer() -> None:
    a = ("10.0.0.1", 5000)
    assert _answers(RecycleConnections(_app, every=0), [a] * 50) == [False] * 50
    assert _answers(RecycleConnections(_app, every=1), [a] * 3) == [True] * 3


def test_counts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that closes its own connections leaves counts behind: they start afresh
    rather than grow."""
    monkeypatch.setattr(connections, "MOST_COUNTED", 4)
    middleware = RecycleConnections(_app, every=2)
    for port in range(10):
        assert _answers(middleware, [("10.0.0.1", port)]) == [False]  # a first request
        assert len(middleware.served) <= 4


def test_a_negative_count_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="SLATEBANDIT_KEEPALIVE_REQUESTS"):
        Settings.from_env({"SLATEBANDIT_KEEPALIVE_REQUESTS": "-1"})


def _request(sock: socket.socket, path: str) -> bytes:
    """One GET on a keep-alive socket; returns the response's head (the body is read too)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    head, _ = read_response(sock)
    return head


def test_a_real_server_closes_the_connection_after_its_requests(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, keepalive_requests=3)
    seed_catalog(settings.database_url, list(demo_items(100, seed=3)))
    with live_server(settings) as base:
        host, port = base.removeprefix("http://").split(":")
        for _ in range(2):  # the second connection gets its own three requests
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                heads = [_request(sock, "/healthz") for _ in range(3)]
                assert [b"connection: close" in h for h in heads] == [False, False, True]
                assert all(h.startswith(b"http/1.1 200") for h in heads)
                assert sock.recv(1) == b""  # the server closed it
