"""End-to-end serving benchmark: catalog write, index build, slate latency in-process and over HTTP.

    python -m benchmarks.serve --items 100000 [--requests 2000] [--data-dir DIR]

Phases, in order, on a fresh SQLite database (a temp dir unless --data-dir names an empty one):

1. catalog write   ``demo_items(N)`` upserted in batches of 5,000, one transaction per batch
2. index build     ``ItemStore.open`` embeds every item and builds the hnswlib index (timed, RSS)
3. in-process      the app under ``TestClient``: POST /v1/slates timed around ``client.post``
                   (so including the test client); then ``routes.create_slate`` called directly
                   on hand-made requests (no HTTP, no test client), timed whole, with the group
                   commit and the stages (user state, candidates, VW, slate builder, payload)
                   timed by wrappers around the live services' functions
4. HTTP            a real ``slatebandit serve`` on a free loopback port (running the same
                   slatebandit as this process), driven by client processes with an asyncio
                   httpx client each, for a bounded count of requests and time, once per
                   ``--workers`` value
5. report          a Markdown table on stdout and JSON in ``benchmarks/results/serve-N.json``

Half of the slate requests come from new users (no history: popular and fresh candidates only);
the other half from users who first sent view/click events, so the similar and session
generators run too. Timings exclude a short warm-up. Everything stays on 127.0.0.1.

The numbers need an otherwise idle machine: before each phase the benchmark waits (up to
--idle-wait seconds) until other processes use under 0.15 cores, and it reports the CPU that
other processes used during each measured phase ("should be ~0").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import (
    IDLE,
    IDLE_WAITS,
    OtherLoad,
    Server,
    _now,
    children_of,
    cpu_seconds,
    dir_mib,
    latency,
    machine,
    machine_busy,
    proc_status,
    say,
    self_cpu,
    source_info,
    wait_idle,
)
from slatebandit.logging.items import LOAD_BATCH as BATCH  # as `items load` writes

CONTEXTS = [
    {"device": "mobile", "page": "home"},
    {"device": "desktop", "page": "home"},
    {"device": "mobile", "page": "category"},
    {"device": "tablet", "page": "cart"},
]
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------
# workload


class Workload:
    """Users and request bodies: half new users, half users with a history of events."""

    def __init__(self, n_items: int, requests: int, seed: int) -> None:
        self.n_items = n_items
        self.rng = random.Random(seed)
        self.warm_users = [f"warm-{j}" for j in range(max(1, requests // 8))]

    def item_id(self) -> str:
        return f"sku-{self.rng.randrange(self.n_items):07d}"

    def events(self) -> list[dict[str, str]]:
        """3-8 views and clicks per warm user, in a shuffled order."""
        out = []
        for user in self.warm_users:
            for _ in range(self.rng.randint(3, 8)):
                kind = "click" if self.rng.random() < 0.3 else "view"
                out.append({"user_id": user, "item_id": self.item_id(), "type": kind})
        self.rng.shuffle(out)
        return out

    def slates(self, n: int, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        """``n`` (kind, body) pairs, alternating new and warm users."""
        out = []
        for i in range(n):
            if i % 2 == 0:
                kind, user = "new", f"{prefix}-new-{i}"
            else:
                kind, user = "warm", self.rng.choice(self.warm_users)
            body = {"user_id": user, "k": 10, "context": dict(self.rng.choice(CONTEXTS))}
            out.append((kind, body))
        return out


# --------------------------------------------------------------------------------------------
# phases 1 and 2: catalog and index


def write_catalog(engine: Any, n: int) -> float:
    from slatebandit.logging import load_items
    from slatebandit.retrieval.demo import demo_items

    start = _now()
    load_items(engine, demo_items(n), total=n, desc="catalog write")
    return _now() - start


def build_index(engine: Any, settings: Any) -> tuple[float, int]:
    from slatebandit.recommender import index_path
    from slatebandit.retrieval import ItemStore

    start = _now()
    store = ItemStore.open(
        engine, index_path(settings), fresh_impressions=settings.fresh_impressions, progress=True
    )
    seconds = _now() - start
    return seconds, len(store.index)


# --------------------------------------------------------------------------------------------
# phase 3: in-process


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


class StageTimer:
    """Times named functions of the live services by shadowing them with timing wrappers.

    Wrapping (rather than re-implementing the handler) keeps the benchmark honest while
    ``routes.create_slate`` evolves: the real handler runs, and a stage it no longer calls
    simply reports no samples. Only this process's objects are touched, and ``restore`` puts
    every original back.
    """

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.calls: Counter[str] = Counter()
        self.last: dict[str, Any] = {}  # the latest result of each wrapped function
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, mark: str) -> bool:
        original = getattr(owner, name, None)
        if original is None:
            return False
        marks, calls, last = self.marks, self.calls, self.last

        if asyncio.iscoroutinefunction(original):

            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                start = _now()
                try:
                    last[mark] = result = await original(*args, **kwargs)
                    return result
                finally:
                    marks[mark] = marks.get(mark, 0.0) + _now() - start
                    calls[mark] += 1

        else:

            def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
                start = _now()
                try:
                    last[mark] = result = original(*args, **kwargs)
                    return result
                finally:
                    marks[mark] = marks.get(mark, 0.0) + _now() - start
                    calls[mark] += 1

        own = vars(owner).get(name)  # module or class attribute, or a shadowing instance one
        setattr(owner, name, wrapper)
        if own is None:
            self._undo.append(lambda: delattr(owner, name))
        else:
            self._undo.append(lambda: setattr(owner, name, own))
        return True

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()

    def reset(self) -> None:
        self.marks.clear()


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


def direct_path(
    portal: Any, state: dict[str, Any], workload: Workload, requests: int, warmup: int
) -> dict[str, Any]:
    """``routes.create_slate`` called directly, timed whole and stage by stage."""
    from slatebandit.logging import DecisionPayload
    from slatebandit.recommender import decide
    from slatebandit.server import routes

    services = state["recommender"]
    timer = StageTimer()
    wrapped = {
        "user_state": timer.wrap(services, "user", "user_state"),
        "generate": timer.wrap(decide, "generate", "generate"),
        "policy": timer.wrap(services.policy, "slate", "policy"),
        "vw_score": timer.wrap(services.policy.scorer, "score", "vw_score"),
        "payload": timer.wrap(DecisionPayload, "encode", "payload"),
        "commit": timer.wrap(services.writer, "submit", "commit"),
    }
    stages: dict[str, list[float]] = {}
    by_kind: dict[str, list[float]] = {"new": [], "warm": []}
    sources: dict[str, Counter[str]] = {"new": Counter(), "warm": Counter()}
    candidates: list[int] = []
    try:
        for n, prefix in ((warmup, "dwarmup"), (requests, "direct")):
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
                marks = timer.marks
                commit = marks.get("commit", 0.0)
                sample = {"handler": total, "decision": total - commit, "commit": commit}
                for name in ("user_state", "generate", "policy", "vw_score", "payload"):
                    if wrapped[name]:
                        sample[name] = marks.get(name, 0.0)
                if wrapped["policy"] and wrapped["vw_score"]:
                    sample["slate_build"] = sample.pop("policy") - sample["vw_score"]
                known = ("user_state", "generate", "vw_score", "slate_build", "payload")
                sample["rest"] = sample["decision"] - sum(sample.get(k, 0.0) for k in known)
                for name, value in sample.items():
                    stages.setdefault(name, []).append(value)
                by_kind[kind].append(sample["decision"])
                with contextlib.suppress(TypeError):
                    candidates.append(len(timer.last.get("generate", ())))
                items = json.loads(response.body)["items"]
                sources[kind].update(str(item.get("source")) for item in items)
    finally:
        timer.restore()
    return {
        "stages": {name: latency(values) for name, values in stages.items()},
        "by_user": {kind: latency(values) for kind, values in by_kind.items()},
        "sources": {kind: dict(counter) for kind, counter in sources.items()},
        "wrapped": wrapped,
        "candidates_mean": round(float(np.mean(candidates)), 1) if candidates else None,
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
        out["direct_wrapped"] = direct["wrapped"]
        out["candidates_mean"] = direct["candidates_mean"]
        gc.callbacks.remove(pauses)
        out["gc"] = pauses.summary()
        out["writer"] = {"commits": services.writer.commits, "units": services.writer.units}
        out["rss_after_requests"] = proc_status()
        say("in-process: shutting the app down (saves the index)")
        stop = _now()
    out["shutdown_s"] = round(_now() - stop, 2)
    return out


# --------------------------------------------------------------------------------------------
# phase 4: HTTP


def _client_process(
    url: str,
    bodies: list[dict[str, Any]],
    kinds: list[str],
    warmup: list[dict[str, Any]],
    concurrency: int,
    max_seconds: float,
    barrier: Any,
    results: Any,
) -> None:
    try:
        import uvloop

        run: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    results.put(run(_client(url, bodies, kinds, warmup, concurrency, max_seconds, barrier)))


async def _client(
    url: str,
    bodies: list[dict[str, Any]],
    kinds: list[str],
    warmup: list[dict[str, Any]],
    concurrency: int,
    max_seconds: float,
    barrier: Any,
) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    times: dict[str, list[float]] = {"all": [], "new": [], "warm": []}
    errors: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as http:

        async def run(
            work: Iterable[tuple[str, dict[str, Any]]], deadline: float, record: bool
        ) -> None:
            for kind, body in work:  # one iterator shared by every task
                if time.monotonic() > deadline:
                    return
                start = _now()
                try:
                    response = await http.post("/v1/slates", json=body)
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                elapsed = _now() - start
                if not record:
                    continue
                if status == "200":
                    times["all"].append(elapsed)
                    times[kind].append(elapsed)
                else:
                    errors[status] += 1

        warm_iter = iter([("warm", body) for body in warmup])
        await asyncio.gather(
            *(run(warm_iter, time.monotonic() + 60, False) for _ in range(concurrency))
        )
        await asyncio.to_thread(barrier.wait)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        began = time.monotonic()
        work = iter(list(zip(kinds, bodies, strict=True)))
        await asyncio.gather(*(run(work, began + max_seconds, True) for _ in range(concurrency)))
        ended = time.monotonic()
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    return {
        "began": began,
        "ended": ended,
        "times": times,
        "errors": dict(errors),
        "cpu_s": cpu,
    }


def run_http(
    data_dir: Path,
    workload: Workload,
    workers: int,
    requests: int,
    concurrency: int,
    client_procs: int,
    max_seconds: float,
    startup_timeout: float,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "workers": workers,
        "concurrency": concurrency,
        "client_procs": client_procs,
    }
    server = Server(data_dir, workers, data_dir / f"serve-w{workers}.log")
    try:
        say(f"HTTP: slatebandit serve --workers {workers} on {server.url}; waiting for /healthz")
        out["ready_s"] = round(server.wait_ready(startup_timeout), 2)
        pids = server.worker_pids()
        out["rss_idle"] = {str(pid): proc_status(pid) for pid in pids}
        say(
            f"HTTP: ready in {out['ready_s']} s; workers {pids}; "
            f"{requests} slates at c={concurrency}"
        )

        pids_now = [server.proc.pid, *children_of(server.proc.pid)]
        wait_idle(f"HTTP w={workers}", lambda: self_cpu() + sum(map(cpu_seconds, pids_now)))
        pairs = workload.slates(requests, f"http-w{workers}")
        warm = [
            body for _, body in workload.slates(max(2 * concurrency, 64), f"http-w{workers}-warmup")
        ]
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(client_procs + 1)
        queue = ctx.Queue()
        per = concurrency // client_procs
        procs = []
        for p in range(client_procs):
            share = pairs[p::client_procs]
            procs.append(
                ctx.Process(
                    target=_client_process,
                    args=(
                        server.url,
                        [body for _, body in share],
                        [kind for kind, _ in share],
                        warm[p::client_procs],
                        per + (1 if p < concurrency % client_procs else 0),
                        max_seconds,
                        barrier,
                        queue,
                    ),
                )
            )
        for proc in procs:
            proc.start()
        barrier.wait(timeout=300)
        busy_before = machine_busy()
        all_pids = [server.proc.pid, *children_of(server.proc.pid)]
        cpu_before = {pid: cpu_seconds(pid) for pid in all_pids}
        wall_start = _now()
        parts = [queue.get(timeout=max_seconds + 300) for _ in procs]
        wall = _now() - wall_start
        cpu_after = {pid: cpu_seconds(pid) for pid in all_pids}
        busy = machine_busy() - busy_before
        for proc in procs:
            proc.join(30)

        span = max(p["ended"] for p in parts) - min(p["began"] for p in parts)
        times: dict[str, list[float]] = {"all": [], "new": [], "warm": []}
        errors: Counter[str] = Counter()
        for part in parts:
            for name, values in part["times"].items():
                times[name] += values
            errors.update(part["errors"])
        done = len(times["all"])
        out["requests"] = requests
        out["ok"] = done
        out["errors"] = dict(errors)
        out["seconds"] = round(span, 2)
        out["slates_per_s"] = round(done / span, 1) if span > 0 else 0.0
        out["latency"] = {name: latency(values) for name, values in times.items()}
        out["client_cpu_s"] = round(sum(p["cpu_s"] for p in parts), 2)
        out["client_cores"] = round(out["client_cpu_s"] / span, 2) if span > 0 else 0.0
        server_cpu = {str(pid): round(cpu_after[pid] - cpu_before[pid], 2) for pid in all_pids}
        out["server_cpu_s"] = server_cpu
        out["server_cores"] = round(sum(server_cpu.values()) / wall, 2)
        # Everything else that ran: the parent of this benchmark is idle, so this is other load.
        client_cpu = sum(p["cpu_s"] for p in parts)
        out["other_cores"] = round((busy - sum(server_cpu.values()) - client_cpu) / wall, 2)
        out["rss"] = {str(pid): proc_status(pid) for pid in pids}
        if workers > 1:
            out["supervisor_rss"] = proc_status(server.proc.pid)
        out["worker_pids"] = pids
        say(
            f"HTTP w={workers}: {out['slates_per_s']} slates/s, "
            f"p50 {out['latency']['all'].get('p50')} ms, "
            f"p99 {out['latency']['all'].get('p99')} ms, errors {dict(errors)}"
        )
    finally:
        say(f"HTTP: stopping the server (workers={workers})")
        out["shutdown_s"] = round(server.stop(), 2)
    return out


# --------------------------------------------------------------------------------------------
# phase 5: report


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def mem(status: dict[str, float]) -> str:
    return f"{status['rss_mib']:,.0f} / {status['hwm_mib']:,.0f} MiB"


def markdown(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, dict[str, Any] | None]] = []

    def fig(phase: str, name: str, value: Any) -> None:
        rows.append((phase, name, _fmt(value), None))

    def lat(phase: str, name: str, stats: dict[str, Any]) -> None:
        rows.append((phase, name, f"n={stats.get('n', 0):,}", stats))

    n = results["items"]
    build = results["build"]
    fig("catalog", f"write {n:,} items (batches of {BATCH:,})", f"{build['catalog_write_s']:.1f} s")
    fig("catalog", "write rate", f"{build['catalog_items_per_s']:,.0f} items/s")
    fig("catalog", "SQLite file after write", f"{build['db_mib']:,.1f} MiB")
    fig("catalog", "other processes' CPU (should be ~0)", f"{build['other_cores_write']:.2f} cores")
    fig("index", "ItemStore.open (embed + hnswlib build)", f"{build['index_build_s']:.1f} s")
    fig("index", "other processes' CPU (should be ~0)", f"{build['other_cores_index']:.2f} cores")
    fig("index", "build rate", f"{build['index_items_per_s']:,.0f} items/s")
    fig("index", "index files", f"{build['index_mib']:,.1f} MiB")
    fig(
        "index",
        "RSS after build (VmRSS / VmHWM)",
        mem(build["rss_after_index"]),
    )
    ip = results["in_process"]
    fig("in-process", "app startup (catalog read + index load)", f"{ip['startup_s']:.1f} s")
    rss = ip["rss_after_requests"]
    fig(
        "in-process",
        "RSS after requests (VmRSS / VmHWM)",
        mem(rss),
    )
    lat("in-process", "POST /v1/events incl. test client", ip["events"])
    for kind in ("all", "new", "warm"):
        lat(
            "in-process",
            f"POST /v1/slates incl. test client ({kind} users)",
            ip["test_client"][kind],
        )
    fig(
        "in-process",
        "other processes' CPU (should be ~0)",
        f"{ip['other_cores_test_client']:.2f} / {ip['other_cores_direct']:.2f} cores",
    )
    direct = ip["direct"]
    lat("in-process", "create_slate handler, no HTTP, incl. commit", direct["handler"])
    lat("in-process", "decision path, no HTTP, excl. commit (all users)", direct["decision"])
    for kind in ("new", "warm"):
        lat("in-process", f"decision path, excl. commit ({kind} users)", ip["direct_by_user"][kind])
    lat("in-process", "group commit of the decision (1 unit)", direct["commit"])
    labels = {
        "user_state": "user_state (one read: state and batch features)",
        "generate": "generate (hnswlib, merge)",
        "vw_score": "VW predict incl. example text",
        "slate_build": "slate builder (pmfs, sampling)",
        "payload": "payload encode (msgpack)",
        "rest": "rest: body, features, response",
    }
    for stage, label in labels.items():
        if stage in direct:
            lat("in-process", f"decision stage: {label}", direct[stage])
    fig("in-process", "mean candidates per slate", ip["candidates_mean"])
    gcs = ip["gc"]
    fig(
        "in-process",
        "GC pauses during the timed requests",
        f"gen2: {gcs['gen2']['count']} x, max {gcs['gen2']['max_ms']} ms; "
        f"gen0+1: {gcs['gen0']['count'] + gcs['gen1']['count']} x, "
        f"max {max(gcs['gen0']['max_ms'], gcs['gen1']['max_ms'])} ms",
    )
    for kind in ("new", "warm"):
        counts = ip["sources"][kind]
        fig(
            "in-process",
            f"shown items by source ({kind} users)",
            ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        )
    for run in results["http"]:
        w = run["workers"]
        phase = f"HTTP workers={w}"
        fig(phase, "startup to ready (/healthz)", f"{run['ready_s']:.1f} s")
        fig(
            phase,
            "requests ok / errors",
            f"{run.get('ok', 0):,} / {sum(run.get('errors', {}).values())}",
        )
        fig(phase, "throughput", f"{run.get('slates_per_s', 0):,.1f} slates/s")
        for kind in ("all", "new", "warm"):
            if "latency" in run:
                lat(phase, f"client-observed latency ({kind} users)", run["latency"][kind])
        fig(
            phase,
            "load generator",
            f"{run['client_procs']} procs x asyncio/httpx, c={run['concurrency']}, "
            f"{run.get('client_cores', 0):.2f} cores",
        )
        fig(phase, "server CPU", f"{run.get('server_cores', 0):.2f} cores")
        fig(phase, "other processes' CPU (should be ~0)", f"{run.get('other_cores', 0):.2f} cores")
        for pid, status in run.get("rss", {}).items():
            fig(
                phase,
                f"worker {pid} RSS (VmRSS / VmHWM)",
                mem(status),
            )
        if "supervisor_rss" in run:
            status = run["supervisor_rss"]
            fig(
                phase,
                "supervisor RSS (VmRSS / VmHWM)",
                mem(status),
            )
    fig("run", "total wall time", f"{results['total_s']:.0f} s")

    lines = [
        f"## slatebandit serve benchmark: {n:,} items",
        "",
        f"{results['machine']['cpus']} CPUs ({results['machine']['cpu']}), "
        f"Python {results['machine']['python']}, SQLite on {results['machine']['data_fs']}; "
        f"latencies in ms.",
        "",
        "| phase | figure | value | p50 | p99 | p99.9 | max |",
        "|---|---|---|--:|--:|--:|--:|",
    ]
    for phase, name, value, stats in rows:
        if stats is None or not stats.get("n"):
            lines.append(f"| {phase} | {name} | {value} | | | | |")
        else:
            cells = " | ".join(f"{stats[p]:.2f}" for p in ("p50", "p99", "p99.9", "max"))
            lines.append(f"| {phase} | {name} | {value} | {cells} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serve", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--items", type=int, required=True, help="catalog size")
    parser.add_argument(
        "--requests", type=int, default=2000, help="timed slates per in-process pass"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="empty directory to use (default: a temp dir, removed after)"
    )
    parser.add_argument(
        "--http-requests", type=int, help="timed slates per HTTP run (default 2x --requests)"
    )
    parser.add_argument(
        "--http-seconds", type=float, default=180.0, help="time bound of one HTTP run"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight over HTTP")
    parser.add_argument("--client-procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--workers", default="1,2", help="comma-separated --workers values to run")
    parser.add_argument(
        "--warmup", type=int, default=50, help="untimed slates before each timed pass"
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=1800.0, help="seconds to wait for /healthz"
    )
    parser.add_argument("--seed", type=int, default=1, help="workload seed")
    parser.add_argument("--keep", action="store_true", help="keep the temp data dir")
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=600.0,
        help="most seconds to wait before each phase for other processes to go quiet (0: none)",
    )
    args = parser.parse_args(argv)
    if args.items < 1 or args.requests < 1:
        parser.error("--items and --requests must be at least 1")
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    IDLE["max_wait"] = args.idle_wait
    http_requests = args.http_requests or 2 * args.requests

    for name in [k for k in os.environ if k.startswith("SLATEBANDIT_")]:
        say(f"ignoring {name} from the environment")
        del os.environ[name]

    from slatebandit.config import Settings
    from slatebandit.logging import open_engine

    temporary = args.data_dir is None
    data_dir = (
        Path(tempfile.mkdtemp(prefix=f"slatebandit-bench-{args.items}-"))
        if temporary
        else args.data_dir
    )
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if (data_dir / "slatebandit.db").exists() or (data_dir / "index").exists():
        parser.error(f"{data_dir} already holds a database or index; give an empty directory")
    db_url = f"sqlite:///{data_dir / 'slatebandit.db'}"
    settings = Settings.from_env(data_dir=data_dir, db_url=db_url)

    began = _now()
    results: dict[str, Any] = {
        "items": args.items,
        "requests": args.requests,
        "http_requests": http_requests,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data_dir": "temporary" if args.data_dir is None else data_dir.name,
        "machine": machine(data_dir),
        "slatebandit": source_info(),
        "command": " ".join(
            [Path(sys.executable).name, "-m", "benchmarks.serve", *(argv or sys.argv[1:])]
        ),
    }
    say(
        f"data dir {data_dir}; {results['machine']['cpus']} CPUs, "
        f"load {results['machine']['loadavg_at_start']}"
    )
    workload = Workload(args.items, args.requests, args.seed)
    try:
        # 1. catalog
        engine = open_engine(settings.database_url)
        wait_idle("catalog write")
        say(f"writing {args.items:,} demo items")
        other = OtherLoad()
        write_s = write_catalog(engine, args.items)
        build: dict[str, Any] = {
            "catalog_write_s": round(write_s, 2),
            "catalog_items_per_s": round(args.items / write_s, 1),
            "db_mib": dir_mib(data_dir),
            "rss_after_write": proc_status(),
            "other_cores_write": other.cores(),
        }
        say(f"catalog written in {write_s:.1f} s")

        # 2. index
        wait_idle("index build")
        other = OtherLoad()
        index_s, live = build_index(engine, settings)
        build["other_cores_index"] = other.cores()
        gc.collect()
        build.update(
            index_build_s=round(index_s, 2),
            index_items_per_s=round(args.items / index_s, 1),
            index_live=live,
            index_mib=dir_mib(data_dir / "index"),
            rss_after_index=proc_status(),
        )
        engine.dispose()
        del engine
        gc.collect()
        results["build"] = build
        say(f"index built in {index_s:.1f} s; RSS {build['rss_after_index']}")

        # 3. in-process
        results["in_process"] = run_in_process(settings, workload, args.requests, args.warmup)
        gc.collect()

        # 4. HTTP
        results["http"] = []
        for w in workers:
            results["http"].append(
                run_http(
                    data_dir,
                    workload,
                    w,
                    http_requests,
                    args.concurrency,
                    args.client_procs,
                    args.http_seconds,
                    args.startup_timeout,
                )
            )
        results["db_mib_at_end"] = dir_mib(data_dir)
        results["idle_waits_s"] = IDLE_WAITS
    finally:
        results["total_s"] = round(_now() - began, 1)
        if temporary and not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)

    # 5. report
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"serve-{args.items}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(markdown(results))
    print()
    say(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
