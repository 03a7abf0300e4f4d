"""The group commit's thread against a busy event loop: what one commit of decisions costs.

    python -m benchmarks.group_commit [--commits 200] [--db URL] [--json FILE]

A serving worker commits on a thread of its own (``logging/writer.py``) while its event loop
runs Python on the main thread. Every SQLite statement and system call of a commit lets go
of the GIL, and the writer's thread then waits to take it back: at once when the loop is
idle, up to Python's switch interval (5 ms by default) when the loop is busy. So a commit's
wall time depends on how often it lets go, and on the switch interval.

This writes batches of 1, 4 and 16 decisions of 10 slots each (a 1,800-byte payload, as a
slate's) to a SQLite database in a temporary directory, through ``GroupCommitWriter._commit``
on this thread, first with the main thread idle, then with another thread running Python
in a loop (the busy event loop) at switch intervals of 5, 1 and 0.5 ms. It prints the
writer's CPU (its own thread's) and the p50 and mean wall time of a commit. To compare
revisions, run it from a worktree of each. With ``--db`` (a PostgreSQL URL) it writes there
instead, in a schema of its own that it drops after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text

from slatebandit.items import Item
from slatebandit.logging import (
    DecisionRecord,
    GroupCommitWriter,
    ShownSlot,
    open_engine,
    upsert_items,
)

ITEMS = 1_000
SLOTS = 10
PAYLOAD_BYTES = 1_800


class Busy:
    """A thread running Python until stopped, as a busy event loop holds the GIL."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self) -> None:
        total = 0
        while not self._stop.is_set():
            for i in range(1_000):
                total += i * i

    def __enter__(self) -> Busy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def database(url: str | None, directory: str) -> Iterator[str]:
    """A SQLite file in ``directory``, or a fresh schema on the PostgreSQL server of ``url``."""
    if url is None:
        yield f"sqlite:///{directory}/log.db"
        return
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    schema = f"group_commit_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(text(f"create schema {schema}"))
    try:
        separator = "&" if "?" in url else "?"
        yield f"{url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"drop schema {schema} cascade"))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.group_commit", description=__doc__)
    parser.add_argument("--commits", type=int, default=200, help="commits timed per row")
    parser.add_argument("--db", help="a PostgreSQL URL to write to instead of SQLite")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    rng = random.Random(0)
    payload = os.urandom(PAYLOAD_BYTES)
    made = 0

    def record() -> DecisionRecord:
        nonlocal made
        made += 1
        shown = tuple(
            ShownSlot(j, rng.randrange(1, ITEMS + 1), 0.1, "exploit", "ann", 0.5)
            for j in range(SLOTS)
        )
        return DecisionRecord(
            f"{made:032x}", time.time(), f"u{rng.randrange(5_000)}", "vw", 3, payload, shown
        )

    rows = []
    default_interval = sys.getswitchinterval()
    with (
        tempfile.TemporaryDirectory(prefix="slatebandit-group-commit-") as directory,
        database(args.db, directory) as url,
    ):
        engine = open_engine(url)
        with engine.begin() as conn:
            upsert_items(conn, [Item(item_id=f"i{i}") for i in range(ITEMS)])
        writer = GroupCommitWriter(engine)
        cases = [("idle", 0.005), ("busy", 0.005), ("busy", 0.001), ("busy", 0.0005)]
        for loop, interval in cases:
            sys.setswitchinterval(interval)
            for batch in (1, 4, 16):
                cpu, walls = 0.0, []
                with Busy() if loop == "busy" else contextlib.nullcontext():
                    for _ in range(args.commits):
                        units = [record() for _ in range(batch)]
                        started, cpu_started = time.perf_counter(), time.thread_time()
                        outcomes = writer._commit(units)
                        cpu += time.thread_time() - cpu_started
                        walls.append(time.perf_counter() - started)
                        assert all(ok for ok, _ in outcomes), outcomes
                walls.sort()
                row = {
                    "loop": loop,
                    "switch_ms": interval * 1e3,
                    "decisions": batch,
                    "writer_cpu_us": round(1e6 * cpu / args.commits),
                    "wall_p50_ms": round(1e3 * walls[len(walls) // 2], 2),
                    "wall_mean_ms": round(1e3 * sum(walls) / len(walls), 2),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        sys.setswitchinterval(default_interval)
        engine.dispose()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
