"""Soak: a real `slatebandit serve --workers 2` with the embedded learner and gated releases
(canaries on), at half its measured capacity for twenty minutes.

First each of the soak's 5,000 shoppers gets a history (``--history`` product views each, on
random items), as a running storefront's shoppers have one: without it the work per slate
grows through the first minutes as they gather one (more candidates from their tastes, more
profile tokens crossed with each), which hides what learning costs. Then a closed-loop burst
(``--probe-seconds``, ``--connections`` at once) measures how many slates a second the server
answers; then an open-loop load sends half that rate, each slate followed by a click on its
first item one time in ten. Every minute it reports:

- the client's p50 and p99 latency, and the requests and errors in that minute; beside
  them, from the server's request-duration histogram, the bound under which 99% of the
  minute's slates were answered inside the server (``server_p99_ms_at_most``) and the
  share answered within 50 ms (``server_within_50ms``): what the client waits beyond
  that is spent before a worker reads the request, or in the load generator;
- the CPU seconds of the server's three busiest processes in that minute (``cpu_s``: the two
  workers and the learner), which show how evenly the workers share the load; of the whole
  server (``server_cpu_s``) and of the load generator (``load_cpu_s``); and the share of the
  machine's cores that were busy (``box_busy``);
- the mean milliseconds, from the server's /metrics, of a slate inside the server (``slate``)
  and of each part of a durable answer's wait for its group commit: queued behind the batch
  being written (``queued``), its batch waiting for the write lock (``lock``), writing and
  committing (``write``); the mean units per commit (``units``); and the workers' mean
  garbage-collection pause by generation (``gc0`` to ``gc2``), with how many they ran
  (``collections``);
- the RSS of the server's processes (the supervisor, its workers, the learner's process and a
  small helper of multiprocessing's), summed, read every ``RSS_EVERY`` seconds: the minute's
  median (``rss_mb``), its highest (``rss_mb_max``) and the last reading's processes, largest
  first (``rss_mb_each``). The growth target is on the median: a reading taken while a worker
  loads a model (a canary's, a new champion's) is 25 to 30 MB higher for a second or two,
  and one reading a minute caught that in both workers at once at the end of one run
  (+13.7% against +5% a minute before);
- the workers' caches, MB in all (``cache_mb``) and by cache (``cache_mb_each``), from
  ``slatebandit_worker_cache_bytes``: every cache is bounded, but some fill for tens of
  minutes, so the report also gives the RSS growth from minute 3 without them
  (``rss_growth_outside_caches``), which a leak would show and a filling cache would not;
- the decisions logged and the database's size on disk;
- learner lag (the newest due decision against the newest checkpoint's), and the versions,
  canaries and release verdicts so far.

    python -m benchmarks.soak [--minutes 20] [--items 20000] [--env LEARNER=off] [--rate R]
                              [--history 8] [--out FILE]

At the end a second probe measures the capacity again, with trained models and the grown log:
the opening probe meets neither, and before the history came first it read 490 to 720
slates/s in four runs on this box (426 at the end of one that opened at 491), so half of it
can be more than half of what the server answers later. Pass ``--rate`` to soak at a known
rate. Writes ``benchmarks/results/soak.json``. The load generator runs on the same two cores as the
server, so the capacity it measures is the pair's, not the server's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select

from benchmarks.learning_curve import serving_process
from slatebandit.logging.schema import canaries, decisions, model_gates, model_versions

RESULTS = Path(__file__).parent / "results" / "soak.json"
SHOPPERS = 5_000
RSS_EVERY = 10.0  # seconds between readings of the server's RSS


def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(children.get(pid, []))
    return pids


def tree_rss(root: int) -> dict[int, int]:
    """pid -> resident bytes, for ``root`` and its descendants, from /proc."""
    out = {}
    for pid in tree_pids(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[pid] = int(line.split()[1]) * 1024
        except OSError:
            pass
    return out


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(root: int) -> dict[int, float]:
    """pid -> user and system CPU seconds so far, for ``root`` and its descendants."""
    out = {}
    for pid in tree_pids(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return out


def busiest(before: dict[int, float], after: dict[int, float], n: int = 3) -> list[float]:
    """The CPU seconds of the ``n`` busiest processes between two ``cpu_seconds`` readings:
    the two workers and the learner, whose split shows how evenly the workers share the load."""
    spent = sorted((after[pid] - before.get(pid, 0.0) for pid in after), reverse=True)
    return [round(s, 1) for s in spent[:n]]


def box_ticks() -> tuple[int, int]:
    """The machine's busy and total CPU ticks so far, over every core, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def read_metrics(base: str) -> str:
    return httpx.get(base + "/metrics", timeout=30).text


def time_sums(text: str) -> dict[str, tuple[float, float]]:
    """From the server's /metrics: (sum, count) of each group-commit part's seconds, of the
    slates' server-side time, and of the units per commit; differences between two readings
    give a minute's means."""
    sums: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == "slatebandit_commit_seconds":
                name = sample.labels["part"]
            elif family.name == "slatebandit_commit_units":
                name = "units"
            elif family.name == "slatebandit_gc_pause_seconds":
                name = f"gc{sample.labels['generation']}"
            elif family.name == "slatebandit_request_duration_seconds":
                if sample.labels.get("route") != "/v1/slates":
                    continue
                name = "slate"
            else:
                continue
            if sample.name.endswith("_sum"):
                sums.setdefault(name, [0.0, 0.0])[0] += sample.value
            elif sample.name.endswith("_count"):
                sums.setdefault(name, [0.0, 0.0])[1] += sample.value
    return {name: (total, n) for name, (total, n) in sums.items()}


def slate_buckets(text: str) -> dict[float, float]:
    """From the server's /metrics: how many slates the workers answered within each bound of
    the request-duration histogram (cumulative, by the bound in seconds, summed over the
    workers). Differences between two readings give a minute's (``server_tail``)."""
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "slatebandit_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("route") == "/v1/slates":
                bound = float(sample.labels["le"])
                out[bound] = out.get(bound, 0.0) + sample.value
    return out


def server_tail(now: dict[float, float], was: dict[float, float]) -> dict[str, float | None]:
    """A minute's slates inside the server: the histogram bound under which 99% of them were
    answered (``server_p99_ms_at_most``; its buckets are ... 10, 25, 35, 50, 75, 100, 250 ms
    ...) and the share answered within 50 ms (``server_within_50ms``). Beside the client's
    p99, it tells time in the server from time before a request reaches it (a worker's busy
    event loop has not read it yet) or in the load generator."""
    bounds = sorted(now)
    counts = [now[b] - was.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return {"server_p99_ms_at_most": None, "server_within_50ms": None}
    p99 = next(b for b, n in zip(bounds, counts, strict=True) if n >= 0.99 * total)
    within = next((n for b, n in zip(bounds, counts, strict=True) if b >= 0.05), total)
    return {
        "server_p99_ms_at_most": p99 * 1000 if p99 != float("inf") else None,
        "server_within_50ms": round(within / total, 4),
    }


def cache_mb(text: str) -> dict[str, float]:
    """From the server's /metrics: the workers' caches, MB each, summed over the workers
    (``slatebandit_worker_cache_bytes``, counted every 30 s)."""
    return {
        sample.labels["cache"]: round(sample.value / 2**20, 1)
        for family in text_string_to_metric_families(text)
        if family.name == "slatebandit_worker_cache_bytes"
        for sample in family.samples
    }


def minute_means(
    now: dict[str, tuple[float, float]], was: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """The means over a minute of ``time_sums``: milliseconds, and units for ``units``."""
    out = {}
    for name, (total, n) in now.items():
        total_was, n_was = was.get(name, (0.0, 0.0))
        mean = (total - total_was) / max(n - n_was, 1)
        out[name] = round(mean if name == "units" else mean * 1000, 2)
    return out


def minute_counts(
    now: dict[str, tuple[float, float]], was: dict[str, tuple[float, float]]
) -> dict[str, int]:
    """How many of each garbage collection (``gc0`` to ``gc2``) the workers ran in a minute."""
    return {
        name: int(n - was.get(name, (0.0, 0.0))[1])
        for name, (_, n) in now.items()
        if name.startswith("gc")
    }


def db_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("slatebandit.db*") if p.is_file())


class Connections:
    """A pool of keep-alive HTTP/1.1 connections that speaks just enough HTTP for JSON POSTs.

    httpx spends about a millisecond of CPU a request, which on two shared cores made the
    load generator, not the server, the limit (121 slates/s); this costs a tenth of that.
    """

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )

    async def open(self) -> None:
        for _ in range(self.size):
            await self._add()

    async def _add(self) -> None:
        """One more connection in the pool: at the start, and in place of one that ended."""
        self.idle.put_nowait(await asyncio.open_connection(self.host, self.port))

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        reader, writer = await self.idle.get()
        try:
            writer.write(head + data)
            header = await reader.readuntil(b"\r\n\r\n")
            status = int(header.split(b" ", 2)[1])
            length = int(header.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            payload = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            writer.close()
            await self._add()
            raise
        if b"connection: close" in header.lower():  # the server ends it: open the next one
            writer.close()
            await self._add()
        else:
            self.idle.put_nowait((reader, writer))
        return status, json.loads(payload)

    async def close(self) -> None:
        while not self.idle.empty():
            _, writer = self.idle.get_nowait()
            writer.close()


class Load:
    def __init__(self, pool: Connections, seed: int) -> None:
        self.pool = pool
        self.rng = np.random.default_rng(seed)
        self.latencies: list[float] = []
        self.errors = 0
        self.requests = 0

    async def one(self) -> None:
        user = f"u{int(self.rng.integers(SHOPPERS))}"
        click = self.rng.random() < 0.1
        started = time.perf_counter()
        try:
            status, body = await self.pool.post("/v1/slates", {"user_id": user, "k": 10})
            self.latencies.append((time.perf_counter() - started) * 1000)
            self.requests += 1
            if status != 200:
                self.errors += 1
                return
            if click:
                reward = {"event_id": body["event_id"], "item_id": body["items"][0]["item_id"]}
                status, _ = await self.pool.post("/v1/rewards", reward)
                self.requests += 1
                self.errors += status != 202
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            self.errors += 1

    def minute(self) -> dict[str, Any]:
        ms = self.latencies or [float("nan")]
        out = {
            "requests": self.requests,
            "errors": self.errors,
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
        }
        self.latencies, self.errors, self.requests = [], 0, 0
        return out


def _pool(base: str, size: int) -> Connections:
    host, port = base.removeprefix("http://").split(":")
    return Connections(host, int(port), size)


async def give_history(base: str, items: int, per_shopper: int, connections: int) -> float:
    """Post ``per_shopper`` product views for each of the soak's shoppers, on items drawn at
    random from the demo catalog, so that they meet the soak with the history a running
    storefront's shoppers have; returns the seconds it took."""
    pool = _pool(base, connections)
    await pool.open()
    rng = np.random.default_rng(4)
    views = [
        {"user_id": f"u{user}", "item_id": f"sku-{int(rng.integers(items)):07d}", "type": "view"}
        for _ in range(per_shopper)
        for user in range(SHOPPERS)
    ]
    started = time.monotonic()

    async def loop(share: list[dict[str, Any]]) -> None:
        for view in share:
            status, body = await pool.post("/v1/events", view)
            if status != 202:
                raise RuntimeError(f"event answered {status}: {body}")

    await asyncio.gather(*(loop(views[i::connections]) for i in range(connections)))
    await pool.close()
    return time.monotonic() - started


async def capacity(base: str, connections: int, seconds: float) -> float:
    """Slates a second with ``connections`` requests always in flight."""
    pool = _pool(base, connections)
    await pool.open()
    load, deadline = Load(pool, seed=1), time.monotonic() + seconds

    async def loop() -> None:
        while time.monotonic() < deadline:
            await load.one()

    started = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(connections)))
    await pool.close()
    return len(load.latencies) / (time.monotonic() - started)


def learner_state(conn: Any, due_by: float) -> dict[str, Any]:
    """Learner lag: the newest decision due to be learned (older than the reward wait) against
    the learned watermark (the newest checkpoint's last decision), in decisions and in
    seconds of decision time; and how far the releases got."""
    due = conn.execute(
        select(func.max(decisions.c.id)).where(decisions.c.created_at <= due_by)
    ).scalar()
    learned = conn.execute(select(func.max(model_versions.c.learned_through))).scalar() or 0
    at = dict(
        conn.execute(
            select(decisions.c.id, decisions.c.created_at).where(
                decisions.c.id.in_([due or 0, learned])
            )
        ).all()
    )
    lag = max(0.0, at.get(due or 0, 0.0) - at.get(learned, at.get(due or 0, 0.0)))
    verdicts = dict(
        conn.execute(
            select(model_gates.c.outcome, func.count()).group_by(model_gates.c.outcome)
        ).all()
    )
    return {
        "learner_lag_decisions": max(0, (due or 0) - learned),
        "learner_lag_seconds": round(lag, 1),
        "versions": conn.execute(select(func.count()).select_from(model_versions)).scalar_one(),
        "canaries": conn.execute(select(func.count()).select_from(canaries)).scalar_one(),
        "verdicts": verdicts,
    }


def log_state(engine: Any, due_by: float) -> tuple[int, dict[str, Any]]:
    """The decisions logged so far, and ``learner_state``."""
    with engine.connect() as conn:
        logged = conn.execute(select(func.count()).select_from(decisions)).scalar_one()
        return logged, learner_state(conn, due_by)


async def soak(
    base: str,
    rate: float,
    minutes: int,
    server_pid: int,
    data_dir: Path,
    url: str,
    reward_wait: float,
) -> list[dict[str, Any]]:
    engine = create_engine(url)
    report = []
    pool = _pool(base, 64)
    await pool.open()
    load = Load(pool, seed=2)
    pending: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    cpu, box, own = cpu_seconds(server_pid), box_ticks(), time.process_time()
    metrics = await asyncio.to_thread(read_metrics, base)
    sums, buckets = time_sums(metrics), slate_buckets(metrics)
    for minute in range(1, minutes + 1):
        end = started + 60 * minute
        sent = 0
        readings: list[int] = []  # the server's RSS, summed, every RSS_EVERY seconds
        read_at = end - 60 + RSS_EVERY / 2
        while (now := time.monotonic()) < end:
            due = int((now - (end - 60)) * rate) - sent  # open loop: keep the schedule
            for _ in range(max(due, 0)):
                task = asyncio.create_task(load.one())
                pending.add(task)
                task.add_done_callback(pending.discard)
            sent += max(due, 0)
            if now >= read_at:
                read_at += RSS_EVERY
                readings.append(sum((await asyncio.to_thread(tree_rss, server_pid)).values()))
            await asyncio.sleep(0.005)  # the schedule's tick, not a wait for the server
        # On a thread: counting a growing log blocks for a while, and on the event loop it
        # would hold back the load's own requests and inflate the latencies it measures.
        logged, learning = await asyncio.to_thread(log_state, engine, time.time() - reward_wait)
        cpu, was = cpu_seconds(server_pid), cpu
        (busy, total), (was_busy, was_total) = box_ticks(), box
        box = busy, total
        spent, own = time.process_time() - own, time.process_time()
        metrics = await asyncio.to_thread(read_metrics, base)
        sums, sums_was = time_sums(metrics), sums
        buckets, buckets_was = slate_buckets(metrics), buckets
        caches = cache_mb(metrics)
        resident = tree_rss(server_pid)
        readings.append(sum(resident.values()))
        row = {
            "minute": minute,
            **load.minute(),
            **server_tail(buckets, buckets_was),
            "cpu_s": busiest(was, cpu),
            "server_cpu_s": round(sum(cpu[p] - was.get(p, 0.0) for p in cpu), 1),
            "load_cpu_s": round(spent, 1),
            "box_busy": round((busy - was_busy) / max(total - was_total, 1), 3),
            "mean_ms": minute_means(sums, sums_was),
            "collections": minute_counts(sums, sums_was),
            "rss_mb": float(np.median(readings)) / 2**20,
            "rss_mb_max": max(readings) / 2**20,
            "rss_mb_end": sum(resident.values()) / 2**20,  # the one reading older soaks took
            "rss_mb_each": sorted((round(b / 2**20) for b in resident.values()), reverse=True),
            "cache_mb": round(sum(caches.values()), 1),
            "cache_mb_each": caches,
            "decisions": logged,
            "db_mb": db_bytes(data_dir) / 2**20,
            **learning,
        }
        report.append(row)
        print(json.dumps(row), flush=True)
    await asyncio.gather(*pending)
    await pool.close()
    engine.dispose()
    return report


def _outside_caches(minute: dict[str, Any]) -> float:
    """A minute's RSS (the median reading) without the workers' caches."""
    return float(minute["rss_mb"] - minute["cache_mb"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=20)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--probe-seconds", type=float, default=30.0)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="slates/s to soak at (default: half the probe)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another SLATEBANDIT_NAME setting for the server, e.g. LEARNER=off",
    )
    parser.add_argument(
        "--separate-learner",
        action="store_true",
        help="learn in a `slatebandit learn` process beside the server, not inside its workers",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=8,
        help="product views per shopper posted before the probe (0: shoppers start new)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        settings = {"WORKERS": "2", "REWARD_WAIT": "30", "SEED": "3", "LOG_LEVEL": "warning"}
        settings.update(dict(item.split("=", 1) for item in args.env))
        # Seed the catalog first, with one process, so the two workers do not both load it.
        demo = ["--demo", "--demo-items", str(args.items)]
        with serving_process({**settings, "WORKERS": "1"}, tmp, demo):
            pass
        learner = None
        if args.separate_learner:
            settings["LEARNER"] = "off"
            env = {k: v for k, v in os.environ.items() if not k.startswith("SLATEBANDIT_")}
            env.update({f"SLATEBANDIT_{k}": v for k, v in settings.items()})
            learner = subprocess.Popen(
                [sys.executable, "-m", "slatebandit.cli", "learn", "--data-dir", tmp], env=env
            )
        with serving_process(settings, tmp) as (base, server):
            pid = server.pid
            if args.history:
                took = asyncio.run(give_history(base, args.items, args.history, args.connections))
                print(f"history: {args.history} views for each of {SHOPPERS} shoppers, {took:.0f}s")
            probe = asyncio.run(capacity(base, args.connections, args.probe_seconds))
            rate = args.rate or probe / 2
            print(f"capacity {probe:.0f} slates/s; soaking at {rate:.0f}/s", flush=True)
            url = f"sqlite:///{data_dir / 'slatebandit.db'}"
            wait = float(settings["REWARD_WAIT"])
            report = asyncio.run(soak(base, rate, args.minutes, pid, data_dir, url, wait))
            # Capacity again, with trained models, the grown log and shoppers with history: the
            # opening probe meets none of these and overstates it.
            closing = asyncio.run(capacity(base, args.connections, args.probe_seconds))
            print(f"capacity at the end {closing:.0f} slates/s", flush=True)
        if learner is not None:
            learner.send_signal(signal.SIGINT)
            learner.wait(timeout=120)
    warm, last = report[2] if len(report) > 2 else report[0], report[-1]  # from minute 3
    grown = report[-1]["decisions"] - report[0]["decisions"]
    results = {
        "capacity_slates_per_s": probe,
        "capacity_at_end_slates_per_s": closing,
        "rate_slates_per_s": rate,
        "minutes": report,
        "errors": sum(r["errors"] for r in report),
        "rss_growth_after_warmup": (last["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"],
        "rss_growth_end_readings": (last["rss_mb_end"] - warm["rss_mb_end"]) / warm["rss_mb_end"],
        "rss_growth_outside_caches": _outside_caches(last) / _outside_caches(warm) - 1.0,
        "worst_p99_ms": max(r["p99_ms"] for r in report),
        "last_p50_over_first": report[-1]["p50_ms"] / report[0]["p50_ms"],
        "largest_learner_lag_seconds": max(r["learner_lag_seconds"] for r in report),
        "db_mb_per_1000_decisions": 1000 * (report[-1]["db_mb"] - report[0]["db_mb"]) / grown
        if grown
        else None,
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "minutes"}, indent=2))


if __name__ == "__main__":
    main()
