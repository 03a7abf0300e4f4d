"""A large catalog served by two workers on one machine snapshot (issue 19).

    python -m benchmarks.catalog_scale [--items 1000000] [--slates 300] [--data DIR]

1. loads ``--items`` demo items into a fresh SQLite database (``logging.load_items``, the bulk
   path ``slatebandit items load`` uses);
2. builds the machine snapshot in a spawned process of its own, as ``serve`` does before its
   workers start (``ItemStore.build_snapshot``): items/s and the builder's peak RSS;
3. starts a real ``slatebandit serve --workers 2`` on a loopback port: each worker's start
   (from its process start, and from the launch of ``serve``, to "Application startup
   complete"), then RSS and PSS of the whole server (supervisor and workers, from
   ``/proc/PID/smaps_rollup``; PSS splits shared pages between the processes that map them);
4. recall@10 at serving ef against brute force on a sample (``benchmarks/ann.py``'s queries:
   items and coherent sessions), asked through ``SharedIndex`` over the same snapshot;
5. ``--slates`` real ``POST /v1/slates``, to show it serves.

Prints a table and writes benchmarks/results/catalog_scale-<items>.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.ann import demo_vectors, queries_of, recall, true_kth
from benchmarks.harness import Server, children_of, latency, smaps
from slatebandit.logging import load_items, open_engine
from slatebandit.retrieval import ItemStore
from slatebandit.retrieval.collab import ItemFactors
from slatebandit.retrieval.columns import stable_hash
from slatebandit.retrieval.demo import demo_items
from slatebandit.retrieval.shared_index import SharedIndex
from slatebandit.retrieval.snapshot import Snapshot

RESULTS = Path(__file__).parent / "results"
TARGETS = {"rss_gib_5m": 8.0, "worker_start_s": 15.0, "build_items_per_s": 10_000, "recall": 0.95}


def load(url: str, n: int) -> float:
    engine = open_engine(url)
    started = time.perf_counter()
    load_items(engine, demo_items(n), total=n, desc="load")
    engine.dispose()
    return time.perf_counter() - started


def _build(url: str, manifest: Path) -> None:
    engine = open_engine(url)
    ItemStore.build_snapshot(engine, manifest, ItemFactors.empty(), progress=True)
    engine.dispose()


def _build_in_memory(url: str) -> None:
    engine = open_engine(url)
    ItemStore.open(engine, None)  # what each worker did before: catalog and hnswlib index
    engine.dispose()


def build_snapshot(url: str, manifest: Path | None) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of the builder process (``manifest`` None: the in-memory
    catalog and hnswlib index each worker built before, for comparison)."""
    started = time.perf_counter()
    target, args = (_build, (url, manifest)) if manifest else (_build_in_memory, (url,))
    builder = multiprocessing.get_context("spawn").Process(target=target, args=args)
    builder.start()
    builder.join()
    if builder.exitcode != 0:
        raise RuntimeError("the snapshot build failed")
    seconds = time.perf_counter() - started
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def serve(data: Path, url: str, slates: int) -> dict[str, Any]:
    log = data / "serve.log"
    server = Server(
        data,
        2,
        log,
        extra=["--db", url],
        settings={"learner": "off", "embedding_interval": "0", "log_level": "info"},
    )
    launched = time.perf_counter()
    started_at: list[float] = []
    ready_at: list[float] = []
    try:
        while len(ready_at) < 2:
            if server.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{server.log_tail()}")
            text = log.read_text(errors="replace")
            now = time.perf_counter() - launched
            for pattern, times in (
                (r"Started server process \[\d+\]", started_at),
                (r"Application startup complete", ready_at),
            ):
                for _ in range(len(re.findall(pattern, text)) - len(times)):
                    times.append(now)
            time.sleep(0.1)
        server.wait_ready(120)
        took = []
        errors = 0
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for i in range(slates):
                sent = time.perf_counter()
                answer = client.post("/v1/slates", json={"user_id": f"u{i % 100}", "k": 10})
                took.append(time.perf_counter() - sent)
                if answer.status_code != 200 or len(answer.json()["items"]) != 10:
                    errors += 1
        pids = [server.proc.pid, *children_of(server.proc.pid)]
        memory = {pid: smaps(pid) for pid in pids}
    finally:
        server.stop(60)
    return {
        "worker_start_from_process_s": [
            round(r - s, 1) for s, r in zip(sorted(started_at), sorted(ready_at), strict=False)
        ],
        "worker_ready_from_launch_s": [round(r, 1) for r in ready_at],
        "server_rss_mib": round(sum(m["rss"] for m in memory.values())),
        "server_pss_mib": round(sum(m["pss"] for m in memory.values())),
        "processes": len(pids),
        "per_process_rss_mib": [round(m["rss"]) for m in memory.values()],
        "per_process_pss_mib": [round(m["pss"]) for m in memory.values()],
        "slates": slates,
        "slate_errors": errors,
        "slate_latency_ms": latency(took),
    }


def measure_recall(
    manifest: Path, n: int, work: Path, queries: int, ef: int = 64
) -> dict[str, Any]:
    data = demo_vectors(n, work)  # row i: demo item i, embedded as the service does
    snap = Snapshot.open(manifest)
    index = SharedIndex(snap, ef=ef)
    hashes = np.fromiter((stable_hash(f"sku-{i:07d}") for i in range(n)), np.uint64, n)
    keys = np.asarray(snap.id_keys)[np.searchsorted(snap.id_hashes, hashes)]
    row_of = np.full(int(keys.max()) + 1, -1, dtype=np.int64)
    row_of[keys] = np.arange(n)
    asked = queries_of(data, queries)
    kth = true_kth(data, asked)
    labels = np.empty((len(asked), 10), dtype=np.int64)
    started = time.perf_counter()
    for i, vector in enumerate(asked):
        labels[i] = index.query(vector, 10)[0][0]
    qps = len(asked) / (time.perf_counter() - started)
    half = len(asked) // 2
    rows = row_of[labels]
    # The same file searched exhaustively: what half precision allows. ANN recall well below it
    # that does not rise with ef means items the graph does not reach, not too narrow a search.
    exact = snap.ann().search(asked, 10, exact=True, threads=0).keys.astype(np.int64)
    return {
        "recall_at_10": round(recall(data, asked, rows, kth), 4),
        "recall_item_queries": round(recall(data, asked[:half], rows[:half], kth[:half]), 4),
        "recall_session_queries": round(recall(data, asked[half:], rows[half:], kth[half:]), 4),
        "recall_exact_search": round(recall(data, asked, row_of[exact], kth), 4),
        "query_qps_1_thread": round(qps),
        "ef": ef,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--slates", type=int, default=300)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--data", type=Path, help="data directory (default: a new temporary one)")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the catalog already loaded in --data"
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also time the old per-worker build (in-memory catalog and hnswlib) in this run",
    )
    parser.add_argument(
        "--recall-at",
        type=int,
        nargs="+",
        metavar="EF",
        help="only measure recall@10 at these search breadths, on the snapshot in --data",
    )
    args = parser.parse_args()
    if args.recall_at:
        cache = Path(tempfile.gettempdir()) / "slatebandit-ann"
        cache.mkdir(exist_ok=True)
        manifest = args.data / "index" / "items.json"
        before = [round(x, 2) for x in os.getloadavg()]
        rows = [
            measure_recall(manifest, args.items, cache, args.queries, ef) for ef in args.recall_at
        ]
        for row in rows:
            print(row)
        out = RESULTS / f"catalog_scale-{args.items}-recall.json"
        meta = json.loads((Snapshot.open(manifest).path / "meta.json").read_text())
        result = {
            "items": args.items,
            "expansion_add": meta.get("expansion_add"),  # what built the graph searched
            "loadavg_before": before,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "by_ef": rows,
        }
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
        return
    data = args.data or Path(tempfile.mkdtemp(prefix="slatebandit-scale-"))
    data.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{data / 'slatebandit.db'}"
    manifest = data / "index" / "items.json"
    load_before = os.getloadavg()
    result: dict[str, Any] = {"items": args.items, "cores": os.cpu_count()}
    if args.reuse and (data / "slatebandit.db").exists():
        shutil.rmtree(manifest.parent, ignore_errors=True)  # the snapshot is rebuilt
        result["load_s"] = None
    else:
        result["load_s"] = round(load(url, args.items), 1)
    seconds, peak = build_snapshot(url, manifest)
    result["build_s"] = round(seconds, 1)
    result["build_items_per_s"] = round(args.items / seconds)
    result["builder_peak_rss_mib"] = round(peak)
    if args.compare:
        old_seconds, _ = build_snapshot(url, None)
        result["old_build_s"] = round(old_seconds, 1)
        result["old_build_items_per_s"] = round(args.items / old_seconds)
        result["build_speedup"] = round(old_seconds / seconds, 2)
    result["snapshot_mib"] = round(
        sum(f.stat().st_size for f in (manifest.parent).rglob("*") if f.is_file()) / 2**20
    )
    result.update(serve(data, url, args.slates))
    cache = Path(tempfile.gettempdir()) / "slatebandit-ann"  # benchmarks/ann.py's vectors
    cache.mkdir(exist_ok=True)
    result.update(measure_recall(manifest, args.items, cache, args.queries))
    result["loadavg_before"] = [round(x, 2) for x in load_before]
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = TARGETS
    out = RESULTS / f"catalog_scale-{args.items}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, value in result.items():
        print(f"{name:<30} {value}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
