"""End-to-end serving benchmark: catalog write, index build, slate latency in-process and over HTTP.

    python -m benchmarks.serve --items 100000 [--requests 2000] [--data-dir DIR]

Phases, in order, on a fresh SQLite database (a temp dir unless --data-dir names an empty one):

1. catalog write   ``demo_items(N)`` upserted in batches of 5,000, one transaction per batch
2. index build     ``ItemStore.open`` embeds every item and builds the hnswlib index (timed, RSS)
                   (both in ``serve_workload.py``, with the users and request bodies)
3. in-process      the app under ``TestClient``: POST /v1/slates timed around ``client.post``
                   (so including the test client); then ``routes.create_slate`` called directly
                   on hand-made requests (no HTTP, no test client), timed whole, with the commit
                   and the stages timed by wrappers around the recommender's own functions
                   (``serve_in_process.py``, ``slate_path.StageTimer``)
4. HTTP            a real ``slatebandit serve`` on a free loopback port (running the same
                   slatebandit as this process), driven by client processes with an asyncio
                   httpx client each, for a bounded count of requests and time, once per
                   ``--workers`` value (``serve_http.py``)
5. report          a Markdown table on stdout (``serve_report.py``) and JSON in
                   ``benchmarks/results/serve-N.json``

Half of the slate requests come from new users (no history: popular and fresh candidates only);
the other half from users who first sent view/click events, so the similar and session
generators run too. Timings exclude a short warm-up. Everything stays on 127.0.0.1.

The numbers need an otherwise idle machine: before each phase the benchmark waits (up to
--idle-wait seconds) until other processes use under 0.15 cores, and it reports the CPU that
other processes used during each measured phase ("should be ~0").
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    IDLE,
    IDLE_WAITS,
    OtherLoad,
    _now,
    dir_mib,
    machine,
    proc_status,
    say,
    source_info,
    wait_idle,
)
from benchmarks.serve_http import run_http
from benchmarks.serve_in_process import run_in_process
from benchmarks.serve_report import markdown
from benchmarks.serve_workload import Workload, build_index, write_catalog

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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
