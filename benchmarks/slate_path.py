"""The slate path without HTTP: ``Recommender.decide`` in one process, as fast as it goes.

    python -m benchmarks.slate_path [--items 100000] [--seconds 20] [--concurrency 16]
                                    [--data-dir DIR] [--profile]

Opens a recommender on a data directory holding the demo catalog (made on first use in
``--data-dir``, or in a temporary one), then runs ``--concurrency`` tasks that each ask for
slates in a loop, with the requests of ``benchmarks/wrk_slates.lua`` (k=10, 500 rotating
users, half with a session item), for ``--seconds``. It prints slates per second of this one
process, and so the CPU per slate on one core: the figure the HTTP server's throughput is
built from, without uvicorn, Starlette or the load generator.

With ``--profile`` it runs itself under py-spy and prints where each 0.1 ms of a slate goes,
by stage (the table in ``benchmarks/README.md``): the event loop's and the threads' samples
(user state reads, group commits) together, as shares of the CPU and as microseconds per slate.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slatebandit.config import Settings

# Stages, by the first frame of each sample that names one (checked in this order).
STAGES = (
    ("user state read (SQL, thread)", ("Parts.user", "read_user_state", "read_user_profile")),
    ("group commit (SQL, thread)", ("GroupCommitWriter._commit",)),
    ("VW scoring", ("VWPolicy.scores",)),
    ("slate builder (pmfs, sampling)", ("build_slate",)),
    ("HNSW queries", ("ItemIndex.query", "Allowed.neighbours")),
    ("candidates: merge and the rest", ("generate",)),
    ("slate: revisions, bands, payload", ("Policy.slate", "Slate.payload", "_record")),
    ("reasons", ("reasons",)),
    ("shopper: features", ("_shopper",)),
    ("decide: the rest", ("decide",)),
)


def workload(n: int, seed: int = 7) -> list[dict[str, object]]:
    """Requests as ``benchmarks/wrk_slates.lua`` makes them."""
    rng = random.Random(seed)
    out = []
    for i in range(1, n + 1):
        body: dict[str, object] = {
            "user_id": f"u{i % 500}",
            "k": 10,
            "context": {"device": "mobile", "page": "home"},
        }
        if i % 2 == 0:
            body["session_items"] = [f"sku-{rng.randint(0, 9999):07d}"]
        out.append(body)
    return out


async def run(settings: Settings, seconds: float, concurrency: int) -> dict[str, float]:
    from slatebandit.recommender import Recommender, SlateQuery

    recommender = await Recommender.open(settings)
    await recommender.start()
    queries = [SlateQuery(**body) for body in workload(5_000)]  # type: ignore[arg-type]
    done = 0
    stop = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < stop:
            await recommender.decide(queries[i % len(queries)])
            i += concurrency
            done += 1

    try:
        for query in queries[:200]:  # warm-up: caches, the first model poll
            await recommender.decide(query)
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        await recommender.close()
    return {
        "slates": done,
        "seconds": round(wall, 2),
        "slates_per_s": round(done / wall, 1),
        "cpu_ms_per_slate": round(1000 * cpu / done, 3),
    }


def prepare(data_dir: Path, items: int) -> None:
    """The demo catalog and its saved index, as ``slatebandit serve --demo`` makes them."""
    from slatebandit.logging import count_live_items, load_items, open_engine
    from slatebandit.recommender import index_path
    from slatebandit.retrieval import ItemStore
    from slatebandit.retrieval.demo import demo_items

    settings = Settings.from_env({}, data_dir=str(data_dir))
    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        empty = count_live_items(conn) == 0
    if empty:
        load_items(engine, demo_items(items), total=items, desc="demo")
    ItemStore.open(engine, index_path(settings), progress=True).save()
    engine.dispose()


RATE = 250  # py-spy's samples per second of each thread


def stages(folded: Path, slates: int) -> list[tuple[str, float, float]]:
    """(stage, share of the slate path's samples, microseconds per slate) from py-spy's raw
    output. A thread's sample is 1/RATE s of it running (py-spy leaves idle threads out); the
    warm-up's 200 slates count with the measured ones."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [re.sub(r" \(.*\)$", "", f) for f in stack.split(";")]
        if not any(f in ("run", "decide", "Parts.user.<locals>.query") for f in frames) and not any(
            "GroupCommitWriter" in f or "Parts.read" in f for f in frames
        ):
            name = "outside the slate path"
        else:
            name = next(
                (s for s, marks in STAGES if any(m in f for f in frames for m in marks)),
                "event loop, threads, other",
            )
        counts[name] += int(n)
        total += int(n)
    outside = counts.pop("outside the slate path", 0)
    path = total - outside
    micros = 1e6 / RATE / (slates + 200)
    return [(name, n / path, n * micros) for name, n in counts.most_common()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.slate_path", description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--data-dir", type=Path, help="kept between runs (default: temporary)")
    parser.add_argument("--profile", action="store_true", help="run under py-spy, print stages")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    if args.profile:
        return _profiled(args)
    temporary = None
    if args.data_dir is None:
        temporary = tempfile.mkdtemp(prefix="slatebandit-slate-path-")
        args.data_dir = Path(temporary)
    try:
        if not (args.data_dir / "index" / "items.json").exists():
            prepare(args.data_dir, args.items)
        work = args.data_dir.with_name(args.data_dir.name + "-run")
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(args.data_dir, work)  # every run starts from the same empty log
        settings = Settings.from_env({}, data_dir=str(work))
        result = asyncio.run(run(settings, args.seconds, args.concurrency))
        shutil.rmtree(work, ignore_errors=True)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _profiled(args: argparse.Namespace) -> int:
    """This benchmark again, under ``py-spy record``; then the table of stages."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory() as tmp:
        raw, figures = Path(tmp) / "profile.txt", Path(tmp) / "figures.json"
        command = [sys.executable, "-m", "benchmarks.slate_path", "--json", str(figures)]
        command += ["--seconds", str(args.seconds), "--concurrency", str(args.concurrency)]
        command += ["--items", str(args.items)]
        if args.data_dir is not None:
            command += ["--data-dir", str(args.data_dir)]
        spy_command = [spy, "record", "-r", str(RATE), "-f", "raw", "-o", str(raw), "--", *command]
        subprocess.run(spy_command, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        result = json.loads(figures.read_text())
        print(json.dumps(result))
        print("| stage | share | µs per slate |\n|---|---:|---:|")
        for name, share, micros in stages(raw, result["slates"]):
            print(f"| {name} | {100 * share:.1f}% | {micros:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
