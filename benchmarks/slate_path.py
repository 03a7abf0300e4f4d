"""The slate path without HTTP: ``Recommender.decide`` in one process, as fast as it goes.

    python -m benchmarks.slate_path [--items 100000] [--seconds 20] [--concurrency 16]
                                    [--rate R] [--history N] [--data-dir DIR] [--stages]

Opens a recommender on a data directory holding the demo catalog (made on first use in
``--data-dir``, or in a temporary one), then runs ``--concurrency`` tasks that each ask for
slates in a loop, with the requests of ``benchmarks/wrk_slates.lua`` (k=10, 500 rotating
users, half with a session item), for ``--seconds``. It prints slates per second of this one
process, and so the CPU per slate on one core: the figure the HTTP server's throughput is
built from, without uvicorn, Starlette or the load generator. It also prints the p50 and p99
of one ``decide``, from the call to its durable answer, and the mean milliseconds of each
part of the wait for the group commit (``commit_mean_ms``: queued behind the batch being
written, waiting for the write lock, writing; and the mean units a commit). With ``--rate``
the slates arrive open-loop instead (Poisson, each its own task), as in a storefront at a
given load, where those waits are what the tail is made of.

With ``--history N`` each of the 500 users first views N random products (as the soak's
shoppers do, ``benchmarks/soak.py --history``): their slates then seed the similar-items
generator with recent items and cross profile tokens with every candidate, as a running
storefront's slates do.

With ``--stages`` it also times each stage of the pipeline, by wrapping the recommender's own
functions (``StageTimer``), and prints where each 0.1 ms of a slate goes: the table in
``benchmarks/README.md``. A stage the pipeline no longer calls reports nothing. For a flame
graph, run it under py-spy: ``py-spy record -o slate.svg -- python -m benchmarks.slate_path``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from slatebandit.config import Settings

# Stages: (label, module, owner attribute path, function name). Nested stages are indented.
STAGES = (
    ("decide, in all", "slatebandit.recommender.core", "Recommender", "decide"),
    ("shopper: state read and features", "slatebandit.recommender.decide", "", "_shopper"),
    ("  state read (SQL, through the engine)", "slatebandit.recommender.state", "", "read_user"),
    (
        "  state read (SQLite, on the loop)",
        "slatebandit.logging.user_reads",
        "SqliteUserReader",
        "read",
    ),
    ("candidates", "slatebandit.recommender.decide", "", "generate"),
    ("  HNSW queries", "slatebandit.retrieval.index", "ItemIndex", "query"),
    (
        "  ANN queries (shared snapshot)",
        "slatebandit.retrieval.shared_index",
        "SharedIndex",
        "query",
    ),
    (
        "  vectors of seeds (shared snapshot)",
        "slatebandit.retrieval.shared_index",
        "SharedIndex",
        "live_vectors",
    ),
    ("  merge", "slatebandit.retrieval.candidates", "", "merge"),
    ("policy: scores and slots", "slatebandit.policies.base", "Policy", "slate"),
    ("  VW scoring (text, parse, predict)", "slatebandit.policies.vw", "VWPolicy", "scores"),
    ("  slate builder (pmfs, sampling)", "slatebandit.policies.base", "", "build_slate"),
    ("reasons", "slatebandit.recommender.decide", "", "reasons"),
    ("decision record (payload)", "slatebandit.recommender.decide", "", "_record"),
    (
        "commit wait",
        "slatebandit.recommender.outage",
        "Outage",
        "log_decision",
    ),
    ("group commit (writer thread)", "slatebandit.logging.writer", "GroupCommitWriter", "_commit"),
    (
        "  decision and slot inserts",
        "slatebandit.logging.decisions",
        "DecisionRecord",
        "write_many",
    ),
)


class StageTimer:
    """Wall time and calls of named functions, by shadowing each with a timing wrapper;
    ``restore`` puts every original back."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self._undo: list[tuple[object, str, object]] = []

    def wrap_stages(self) -> None:
        import importlib

        for label, module, owner_name, name in STAGES:
            owner: object = importlib.import_module(module)
            if owner_name:  # absent in a revision without it: that stage reports nothing
                owner = getattr(owner, owner_name, None)
            if hasattr(owner, name):
                self.wrap(owner, name, label)

    def wrap(self, owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)
        seconds, calls = self.seconds, self.calls

        if asyncio.iscoroutinefunction(original):

            async def timed(*args: object, **kwargs: object) -> object:
                start = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    seconds[label] += time.perf_counter() - start
                    calls[label] += 1

        else:

            def timed(*args: object, **kwargs: object) -> object:  # type: ignore[misc]
                start = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    seconds[label] += time.perf_counter() - start
                    calls[label] += 1

        self._undo.append((owner, name, vars(owner).get(name, original)))
        setattr(owner, name, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def restore(self) -> None:
        while self._undo:
            owner, name, original = self._undo.pop()
            setattr(owner, name, original)

    def table(self, slates: int) -> list[dict[str, object]]:
        return [
            {
                "stage": label,
                "us_per_slate": round(1e6 * self.seconds[label] / slates),
                "calls_per_slate": round(self.calls[label] / slates, 2),
            }
            for label, *_ in STAGES
            if self.calls[label]
        ]


def commit_waits(since: dict[str, float] | None = None) -> dict[str, float]:
    """The group commit's histograms (``logging/writer.py``) read from this process: with
    ``since`` (an earlier reading), the mean milliseconds of each part since then, and the
    mean units a commit; without it, the running sums and counts to pass later."""
    from slatebandit.logging.writer import COMMIT_SECONDS, COMMIT_UNITS

    now: dict[str, float] = {}
    for histogram, prefix in ((COMMIT_SECONDS, ""), (COMMIT_UNITS, "units")):
        for metric in histogram.collect():
            for sample in metric.samples:
                if sample.name.endswith(("_sum", "_count")):
                    key = prefix or sample.labels["part"]
                    now[f"{key}{sample.name[sample.name.rindex('_') :]}"] = sample.value
    if since is None:
        return now
    means = {}
    for key in ("queued", "lock", "write", "units"):
        count = now.get(f"{key}_count", 0.0) - since.get(f"{key}_count", 0.0)
        total = now.get(f"{key}_sum", 0.0) - since.get(f"{key}_sum", 0.0)
        scale = 1.0 if key == "units" else 1000.0
        means[key] = scale * total / count if count else 0.0
    return means


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


async def give_history(recommender: object, views: int, items: int, seed: int = 4) -> None:
    """``views`` product views for each of the workload's 500 users, on random demo items."""
    rng = random.Random(seed)
    for user in range(500):
        for _ in range(views):
            item = f"sku-{rng.randint(0, items - 1):07d}"
            await recommender.event(f"u{user}", item, "view")  # type: ignore[attr-defined]


async def run(
    settings: Settings,
    seconds: float,
    concurrency: int,
    timer: StageTimer | None = None,
    history: int = 0,
    items: int = 100_000,
    rate: float = 0.0,
) -> dict[str, object]:
    from slatebandit.recommender import Recommender, SlateQuery

    recommender = await Recommender.open(settings)
    await recommender.start()
    queries = [SlateQuery(**body) for body in workload(5_000)]  # type: ignore[arg-type]
    done = 0
    stop = 0.0  # set once the history and the warm-up are done
    latencies: list[float] = []  # seconds of each decide, its group commit included

    async def one(i: int) -> None:
        nonlocal done
        asked = time.perf_counter()
        await recommender.decide(queries[i % len(queries)])
        latencies.append(time.perf_counter() - asked)
        done += 1

    async def client(offset: int) -> None:
        for i in itertools.count(offset, concurrency):
            if time.perf_counter() >= stop:
                return
            await one(i)

    async def open_loop() -> None:
        # Poisson arrivals at ``rate``, each slate its own task, as an open-loop client sends.
        gaps = np.random.default_rng(11).exponential(1 / rate, size=int(rate * seconds * 2) + 10)
        tasks, due = [], time.perf_counter()
        for i, gap in enumerate(gaps):
            due += gap
            if due >= stop:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)

    try:
        await give_history(recommender, history, items)
        for query in queries[:200]:  # warm-up: caches, the first model poll
            await recommender.decide(query)
        if timer is not None:
            timer.wrap_stages()
        commits = commit_waits()
        start, cpu = time.perf_counter(), time.process_time()
        stop = start + seconds
        if rate:
            await open_loop()
        else:
            await asyncio.gather(*(client(i) for i in range(concurrency)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        commits = commit_waits(since=commits)
    finally:
        if timer is not None:
            timer.restore()
        await recommender.close()
    result: dict[str, object] = {
        "slates": done,
        "seconds": round(wall, 2),
        "slates_per_s": round(done / wall, 1),
        "cpu_ms_per_slate": round(1000 * cpu / done, 3),
        "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 2),
        "commit_mean_ms": {part: round(ms, 3) for part, ms in commits.items()},
    }
    if timer is not None:
        result["stages"] = timer.table(done)
    return result


def prepare(data_dir: Path, items: int) -> None:
    """The demo catalog and its saved index, as ``slatebandit serve --demo`` makes them."""
    from benchmarks.serve_workload import write_catalog
    from slatebandit.logging import count_live_items, open_engine
    from slatebandit.recommender import index_path
    from slatebandit.retrieval import ItemStore

    settings = Settings.from_env({}, data_dir=str(data_dir))
    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        empty = count_live_items(conn) == 0
    if empty:
        write_catalog(engine, items)
    ItemStore.open(engine, index_path(settings), progress=True).save()
    engine.dispose()


@contextlib.contextmanager
def demo_copy(data_dir: Path | None, items: int, prefix: str) -> Iterator[Path]:
    """A fresh copy of a data directory holding the demo catalog and its index (made on first
    use in ``data_dir``, or in a temporary one), so every run starts from the same empty log;
    both are removed after, but a given ``data_dir``."""
    temporary = None
    if data_dir is None:
        temporary = tempfile.mkdtemp(prefix=prefix)
        data_dir = Path(temporary)
    work = data_dir.with_name(data_dir.name + "-run")
    try:
        if not (data_dir / "index" / "items.json").exists():
            prepare(data_dir, items)
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(data_dir, work)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.slate_path", description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--history", type=int, default=0, help="product views each user makes first (default 0)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="send slates at this rate (Poisson arrivals) instead of --concurrency in a loop",
    )
    parser.add_argument("--data-dir", type=Path, help="kept between runs (default: temporary)")
    parser.add_argument("--stages", action="store_true", help="time each stage of the pipeline")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    with demo_copy(args.data_dir, args.items, "slatebandit-slate-path-") as work:
        settings = Settings.from_env({}, data_dir=str(work))
        timer = StageTimer() if args.stages else None
        result = asyncio.run(
            run(
                settings,
                args.seconds,
                args.concurrency,
                timer,
                args.history,
                args.items,
                args.rate,
            )
        )
    stages = result.pop("stages", None)
    print(json.dumps(result))
    if stages:
        print("| stage | µs per slate | calls per slate |\n|---|---:|---:|")
        for row in stages:  # type: ignore[attr-defined]
            print(f"| {row['stage']} | {row['us_per_slate']} | {row['calls_per_slate']} |")
        result["stages"] = stages
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
