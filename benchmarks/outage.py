"""Serving through a PostgreSQL outage: latency before, during and after, and how long the
spool takes to ship.

`serve --workers 2` (embedded learner) against a PostgreSQL cluster of its own, under open-loop
load (slates, one click in ten) at a fixed rate. After ``--before`` seconds the cluster is
stopped (as a crash would), after ``--during`` more it is started again, and the load goes on
for ``--after`` seconds: while the spool ships ("shipping"), then "after". Reported per phase:
slate p50/p99, errors, and where the decisions were logged; then the seconds from the
database's return to an empty spool, and whether every acknowledged decision is stored
exactly once.

    python -m benchmarks.outage [--rate 80] [--items 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import create_engine, func, select

from benchmarks.learning_curve import serving_process
from benchmarks.pg_cluster import Cluster, private_cluster
from benchmarks.soak import Connections, _pool
from slatebandit.logging.schema import decisions

RESULTS = Path(__file__).parent / "results" / "outage.json"


class Phase:
    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.errors = 0
        self.logged: Counter[str] = Counter()
        self.events: list[str] = []

    def report(self) -> dict[str, Any]:
        ms = self.latencies or [float("nan")]
        return {
            "phase": self.name,
            "slates": len(self.latencies),
            "errors": self.errors,
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "logged": dict(self.logged),
        }


async def one(pool: Connections, rng: np.random.Generator, phase: Phase) -> None:
    started = time.perf_counter()
    try:
        status, body = await pool.post("/v1/slates", {"user_id": f"u{rng.integers(5000)}"})
        phase.latencies.append((time.perf_counter() - started) * 1000)
        if status != 200:
            phase.errors += 1
            return
        phase.logged[body["logged"]] += 1
        phase.events.append(body["event_id"])
        if rng.random() < 0.1:
            reward = {"event_id": body["event_id"], "item_id": body["items"][0]["item_id"]}
            status, _ = await pool.post("/v1/rewards", reward)
            phase.errors += status != 202
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        phase.errors += 1


async def run_phase(pool: Connections, rate: float, seconds: float, phase: Phase) -> None:
    rng = np.random.default_rng(len(phase.name))
    pending: set[asyncio.Task[None]] = set()
    started, sent = time.monotonic(), 0
    while (now := time.monotonic()) < started + seconds:
        due = int((now - started) * rate) - sent  # open loop: keep the schedule
        for _ in range(max(due, 0)):
            task = asyncio.create_task(one(pool, rng, phase))
            pending.add(task)
            task.add_done_callback(pending.discard)
        sent += max(due, 0)
        await asyncio.sleep(0.005)  # the schedule's tick, not a wait for the server
    await asyncio.gather(*pending)


def shipped_after(base: str, since: float) -> float:
    """Seconds from ``since`` until /healthz reports no spool and a reachable database."""
    while True:
        health = httpx.get(base + "/healthz", timeout=10).json()
        if health["database"] == "ok" and health["spool"]["segments"] == 0:
            return time.monotonic() - since
        time.sleep(0.05)  # another process's state: nothing to await


async def outage(base: str, cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    pool = _pool(base, 32)
    await pool.open()
    phases = [Phase("before"), Phase("during"), Phase("shipping"), Phase("after")]
    await run_phase(pool, args.rate, args.before, phases[0])
    cluster.stop()
    await run_phase(pool, args.rate, args.during, phases[1])
    cluster.start()
    back = time.monotonic()
    # Until the spool has shipped, then the rest of --after: each slate counts in the phase
    # in which it was sent.
    shipping = asyncio.create_task(run_phase(pool, args.rate, args.after, phases[2]))
    ship_seconds = await asyncio.to_thread(shipped_after, base, back)
    shipping.cancel()
    await asyncio.gather(shipping, return_exceptions=True)
    await run_phase(pool, args.rate, args.after - ship_seconds, phases[3])
    await pool.close()
    return {
        "phases": [p.report() for p in phases],
        "ship_seconds": round(ship_seconds, 2),
        "acknowledged": [e for p in phases for e in p.events],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=80.0, help="slates a second")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--before", type=float, default=30.0)
    parser.add_argument("--during", type=float, default=30.0)
    parser.add_argument("--after", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with private_cluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        settings = {"SEED": "3", "LOG_LEVEL": "warning", "REWARD_WAIT": "30"}
        demo = ["--db", cluster.url, "--demo", "--demo-items", str(args.items)]
        with serving_process({**settings, "WORKERS": "1"}, tmp, demo):
            pass  # seed the catalog once
        extra = ["--db", cluster.url]
        with serving_process({**settings, "WORKERS": "2"}, tmp, extra) as (base, _):
            result = asyncio.run(outage(base, cluster, args))
        engine = create_engine(cluster.url)
        with engine.connect() as conn:
            stored = dict(
                conn.execute(
                    select(decisions.c.event_id, func.count()).group_by(decisions.c.event_id)
                ).all()
            )
        engine.dispose()
    acknowledged = result.pop("acknowledged")
    result["acknowledged_decisions"] = len(acknowledged)
    result["stored_exactly_once"] = all(stored.get(e) == 1 for e in acknowledged)
    result["rate_slates_per_s"] = args.rate
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
