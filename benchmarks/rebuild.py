"""Slate latency over HTTP while a serving process rebuilds its index with new embeddings.

    python -m benchmarks.rebuild [--items 20000] [--baseline 15] [--after 10]

Starts ``slatebandit serve`` (one worker) on a loopback port over a fresh SQLite database with a
demo catalog, sends slates back to back from this process over one keep-alive connection, and
after ``--baseline`` seconds stores a new version of collaborative vectors (random, one per
item) straight into the database. The server notices it within a poll, rebuilds its index beside
the serving one and swaps it in; ``/healthz`` says when (``embeddings_version``). Reports client
latency p50/p99 before, during and after the rebuild, and errors. Figures go to stdout and
benchmarks/results/rebuild.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.harness import free_port
from slatebandit.logging import load_items, open_engine
from slatebandit.logging.embeddings import save_factors
from slatebandit.retrieval.collab import COLLAB_DIM
from slatebandit.retrieval.demo import demo_items

RESULTS = Path(__file__).parent / "results" / "rebuild.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--baseline", type=float, default=15.0, help="seconds before the rebuild")
    parser.add_argument("--after", type=float, default=10.0, help="seconds after the swap")
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="slatebandit-rebuild-"))
    url = f"sqlite:///{data / 'slatebandit.db'}"
    engine = open_engine(url)
    load_items(engine, demo_items(args.items, seed=1), total=args.items)
    port = free_port()
    env = {
        **os.environ,
        "SLATEBANDIT_LEARNER": "off",
        "SLATEBANDIT_EMBEDDING_INTERVAL": "0",
        "SLATEBANDIT_MODEL_POLL_SECONDS": "1",
        "SLATEBANDIT_LOG_LEVEL": "warning",
    }
    command = [sys.executable, "-m", "slatebandit.cli", "serve", "--port", str(port)]
    server = subprocess.Popen([*command, "--db", url, "--data-dir", str(data)], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            samples: list[tuple[float, float]] = []  # (sent at, seconds)
            errors = 0
            swapped_at: list[float] = []
            started = time.perf_counter()
            stored_at = None

            def watch() -> None:
                with httpx.Client(base_url=base, timeout=30) as probe:
                    while not swapped_at:
                        if probe.get("/healthz").json()["embeddings_version"] >= 1:
                            swapped_at.append(time.perf_counter())
                        time.sleep(0.1)

            for i in range(1_000_000):
                now = time.perf_counter()
                if stored_at is None and now - started > args.baseline:
                    rng = np.random.default_rng(0)
                    vectors = rng.standard_normal((args.items, COLLAB_DIM)).astype(np.float32)
                    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                    save_factors(
                        engine,
                        method="svd",
                        interactions=args.items,
                        seconds=0.0,
                        keys=np.arange(1, args.items + 1),
                        vectors=vectors,
                        counts=np.full(args.items, 5.0),
                    )
                    stored_at = time.perf_counter()
                    threading.Thread(target=watch, daemon=True).start()
                if swapped_at and now - swapped_at[0] > args.after:
                    break
                answer = client.post("/v1/slates", json={"user_id": f"u{i % 500}", "k": 10})
                took = time.perf_counter() - now
                if answer.status_code != 200 or len(answer.json()["items"]) != 10:
                    errors += 1
                samples.append((now, took))
    finally:
        server.terminate()
        server.wait(timeout=30)
        engine.dispose()

    assert stored_at is not None and swapped_at
    phases = {
        "before": [t for at, t in samples if at < stored_at],
        "during": [t for at, t in samples if stored_at <= at < swapped_at[0]],
        "after": [t for at, t in samples if at >= swapped_at[0]],
    }
    figures = {
        "items": args.items,
        "errors": errors,
        "rebuild_s": round(swapped_at[0] - stored_at, 1),
        **{
            name: {
                "n": len(times),
                "p50_ms": round(float(np.percentile(times, 50)) * 1000, 2),
                "p99_ms": round(float(np.percentile(times, 99)) * 1000, 2),
                "max_ms": round(float(np.max(times)) * 1000, 2),
            }
            for name, times in phases.items()
            if times
        },
    }
    print(json.dumps(figures, indent=2))
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
