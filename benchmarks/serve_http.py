"""``benchmarks.serve``'s phase 4: a real ``slatebandit serve`` on a loopback port, driven by
client processes with an asyncio httpx client each, for a bounded count of requests and time.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    Server,
    _now,
    children_of,
    cpu_seconds,
    latency,
    machine_busy,
    proc_status,
    say,
    self_cpu,
    wait_idle,
)
from benchmarks.serve_workload import Workload


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
