"""``benchmarks.serve``'s phase 3: the app in this process, first through Starlette's test
client, then ``routes.create_slate`` called on hand-made requests (no HTTP, no test client),
timed whole and stage by stage (``slate_path.StageTimer`` wraps the recommender's own
functions).
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from typing import Any

from benchmarks.harness import (
    OtherLoad,
    _now,
    latency,
    proc_status,
    say,
    wait_idle,
)
from benchmarks.serve_workload import Workload
from benchmarks.slate_path import StageTimer


class GcPauses:
    """A ``gc.callbacks`` hook recording how long each collection stopped the world."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = _now()
        else:
            self.pauses[info["generation"]].append(_now() - self._start)

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            f"gen{g}": {
                "count": len(p),
                "total_ms": round(sum(p) * 1000, 2),
                "max_ms": round(max(p, default=0.0) * 1000, 2),
            }
            for g, p in self.pauses.items()
        }


async def call_handler(handler: Any, state: dict[str, Any], path: str, body: bytes) -> Any:
    """Run a Starlette handler on a hand-made request: no HTTP, no ASGI server, no test client."""
    from starlette.requests import Request

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": dict(state),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return await handler(Request(scope, receive))


# The stages reported, by slate_path.STAGES label.
STAGES = {
    "user_state": "shopper: state read and features",
    "generate": "candidates",
    "vw_score": "  VW scoring (text, parse, predict)",
    "slate_build": "  slate builder (pmfs, sampling)",
    "payload": "decision record (payload)",
    "commit": "commit wait",
}


def direct_path(
    portal: Any, state: dict[str, Any], workload: Workload, requests: int, warmup: int
) -> dict[str, Any]:
    """``routes.create_slate`` called directly, timed whole and stage by stage."""
    from slatebandit.server import routes

    timer = StageTimer()
    stages: dict[str, list[float]] = {}
    by_kind: dict[str, list[float]] = {"new": [], "warm": []}
    sources: dict[str, Counter[str]] = {"new": Counter(), "warm": Counter()}
    try:
        for n, prefix in ((warmup, "dwarmup"), (requests, "direct")):
            if prefix == "direct":
                timer.wrap_stages()
            for kind, data in workload.slates(n, prefix):
                body = json.dumps(data).encode()
                timer.reset()
                start = _now()
                response = portal.call(call_handler, routes.create_slate, state, "/v1/slates", body)
                total = _now() - start
                if response.status_code != 200:
                    raise RuntimeError(f"create_slate answered {response.status_code}")
                if prefix != "direct":
                    continue
                sample = {name: timer.seconds[label] for name, label in STAGES.items()}
                sample["handler"] = total
                sample["decision"] = total - sample["commit"]
                known = ("user_state", "generate", "vw_score", "slate_build", "payload")
                sample["rest"] = sample["decision"] - sum(sample[k] for k in known)
                for name, value in sample.items():
                    stages.setdefault(name, []).append(value)
                by_kind[kind].append(sample["decision"])
                items = json.loads(response.body)["items"]
                sources[kind].update(str(item.get("source")) for item in items)
    finally:
        timer.restore()
    return {
        "stages": {name: latency(values) for name, values in stages.items()},
        "by_user": {kind: latency(values) for kind, values in by_kind.items()},
        "sources": {kind: dict(counter) for kind, counter in sources.items()},
    }


def run_in_process(settings: Any, workload: Workload, requests: int, warmup: int) -> dict[str, Any]:
    from starlette.testclient import TestClient

    from slatebandit.server import create_app

    out: dict[str, Any] = {}
    app = create_app(settings)
    start = _now()
    with TestClient(app) as client:
        out["startup_s"] = round(_now() - start, 2)
        out["rss_after_startup"] = proc_status()
        say(f"in-process app up in {out['startup_s']} s; posting events for warm users")
        services = client.app_state["recommender"]

        event_times = []
        for body in workload.events():
            t = _now()
            response = client.post("/v1/events", json=body)
            event_times.append(_now() - t)
            assert response.status_code == 202, response.text
        out["events"] = latency(event_times)

        for _, body in workload.slates(warmup, "warmup"):
            assert client.post("/v1/slates", json=body).status_code == 200

        wait_idle("in-process test client")
        pauses = GcPauses()
        gc.callbacks.append(pauses)
        say(f"in-process: {requests} POST /v1/slates through the test client")
        other = OtherLoad()
        times: dict[str, list[float]] = {"all": [], "new": [], "warm": []}
        sources: dict[str, Counter[str]] = {"new": Counter(), "warm": Counter()}
        for kind, body in workload.slates(requests, "tc"):
            t = _now()
            response = client.post("/v1/slates", json=body)
            elapsed = _now() - t
            assert response.status_code == 200, response.text
            times["all"].append(elapsed)
            times[kind].append(elapsed)
            sources[kind].update(str(item.get("source")) for item in response.json()["items"])
        out["test_client"] = {name: latency(values) for name, values in times.items()}
        out["other_cores_test_client"] = other.cores()
        out["sources"] = {kind: dict(counter) for kind, counter in sources.items()}

        say(f"in-process: {requests} calls of routes.create_slate without HTTP")
        portal = client.portal
        assert portal is not None
        wait_idle("in-process direct")
        other = OtherLoad()
        direct = direct_path(portal, client.app_state, workload, requests, warmup)
        out["other_cores_direct"] = other.cores()
        out["direct"] = direct["stages"]
        out["direct_by_user"] = direct["by_user"]
        out["direct_sources"] = direct["sources"]
        gc.callbacks.remove(pauses)
        out["gc"] = pauses.summary()
        out["writer"] = {"commits": services.writer.commits, "units": services.writer.units}
        out["rss_after_requests"] = proc_status()
        say("in-process: shutting the app down (saves the index)")
        stop = _now()
    out["shutdown_s"] = round(_now() - stop, 2)
    return out
