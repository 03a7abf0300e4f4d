"""Shoppers' state at scale: the slate path's read of one shopper's state at 1M and 10M rows.

    python -m benchmarks.user_state_scale [--rows 10000000 | --sizes 1000000,10000000]
        [--reads 20000] [--alternatives] [--keep] [--reuse] [--prewarm]
        [--server postgresql+psycopg://postgres@127.0.0.1:5432] [--database NAME]

Makes a PostgreSQL database of its own (``--database``; dropped at the end unless ``--keep``,
and continued from the rows it holds with ``--reuse``), creates the schema with
``open_engine``, and fills ``user_states`` and ``user_profiles`` by binary COPY, one row per
shopper: the ``UserState`` that ``observe`` leaves after the shopper's actions, encoded by its
own ``to_bytes``, and batch features packed as ``save_user_profiles`` packs them. With
``--sizes`` the same tables grow from one size to the next and are measured at each.

At each size it times, for shoppers drawn uniformly from all rows, with one reader and with two
at once, three layers of what a slate waits for:

    statement  ``read_user`` on a connection the reader holds (BEGIN and the one SELECT)
    checkout   ``Parts._run(read_user, point=True)``: a connection from the point reads' pool
               (no ping), the read outside a transaction
    slate      ``Parts.user``: on the event loop through ``UserReader`` (psycopg's async pool)
               within the database timeout, then the decode through the worker's cache of
               decoded states (nearly all misses)

and the same for shoppers never seen. With ``--alternatives`` it also times what the read was
and changes one could make to it (``alternatives``), at the last size, taking turns with the
product's read. ``--prewarm`` first reads both tables into the page cache (``pg_prewarm``).
Each run is appended to ``benchmarks/results/user_state_scale.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import psycopg
from sqlalchemy import Engine, Select, bindparam, create_engine, literal_column, select, text
from tqdm import tqdm

from benchmarks.harness import cpu_seconds, latency, machine_busy, say
from slatebandit.logging.engine import open_engine, point_reader
from slatebandit.logging.schema import user_profiles, user_states
from slatebandit.logging.user_reads import UserReader
from slatebandit.logging.users import READ_USER, UserRead, read_user, user_read
from slatebandit.recommender.outage import Outage
from slatebandit.recommender.state import Parts
from slatebandit.retrieval import UserState, UserStates
from slatebandit.retrieval.user_state import ACTED_ITEMS, COUNTERS, EVENT_WEIGHTS, RECENT_ITEMS

RESULTS = Path(__file__).parent / "results" / "user_state_scale.json"
ITEMS = 1_000_000  # catalog keys a shopper acts on
CATEGORIES = tuple(f"dept{d}/cat{c}" for d in range(12) for c in range(20))
BRANDS = tuple(f"brand{b}" for b in range(600))
KINDS = ("view", "click", "add_to_cart", "purchase")
KIND_SHARES = (0.75, 0.17, 0.06, 0.02)
MEAN_ACTIONS = 10  # actions per shopper: geometric, so most have a handful, a few hundreds
BATCH = 50_000  # rows per COPY transaction
WARM_UP = 2_000


def shopper_id(i: int) -> str:
    """Shopper ``i``'s stored id: 32 hex digits, as ``Parts.user_key`` stores a keyed id."""
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).hexdigest()


def unknown_id(i: int) -> str:
    return hashlib.blake2b(b"unknown" + i.to_bytes(8, "little"), digest_size=16).hexdigest()


def shoppers(start: int, count: int, now: float) -> Iterator[tuple[str, bytes, bytes]]:
    """(id, encoded state, encoded profile) of shoppers ``start`` to ``start + count``.

    Each state is what ``UserState.observe`` leaves after the shopper's actions (without the
    per-action vector arithmetic, which changes no byte count: the session vector is 64
    float32s whatever the decay), encoded by ``UserState.to_bytes``."""
    rng = np.random.default_rng(start)
    actions = np.minimum(rng.geometric(1 / MEAN_ACTIONS, count), 2 * ACTED_ITEMS)
    total = int(actions.sum())
    favourite = rng.integers(len(CATEGORIES), size=count)
    keys = (ITEMS * rng.random(total) ** 2).astype(np.int64).tolist()  # popular items more
    gaps = rng.exponential(90.0, total)
    kinds = rng.choice(len(KINDS), size=total, p=KIND_SHARES).tolist()
    loyal = rng.random(total) < 0.6
    row_of = np.repeat(np.arange(count), actions)
    cats = np.where(loyal, favourite[row_of], rng.integers(len(CATEGORIES), size=total)).tolist()
    brands = np.where(
        loyal, favourite[row_of] * 7 % len(BRANDS), rng.integers(len(BRANDS), size=total)
    )
    brands = brands.tolist()
    seen = now - rng.uniform(0, 90 * 86400, count)
    vectors = rng.standard_normal((count, 64), dtype=np.float32)
    at = 0
    for j, n in enumerate(actions.tolist()):
        times = (seen[j] - np.cumsum(gaps[at : at + n])[::-1]).tolist()
        recent: dict[int, float] = {}
        acted: dict[str, dict[int, float]] = {}
        counters: tuple[dict[str, float], dict[str, float]] = ({}, {})
        for i in range(at, at + n):
            key, kind, when = keys[i], KINDS[kinds[i]], times[i - at]
            recent.pop(key, None)
            recent[key] = when
            done = acted.setdefault(kind, {})
            done.pop(key, None)
            done[key] = when
            if len(done) > ACTED_ITEMS:
                del done[next(iter(done))]
            weight = EVENT_WEIGHTS[kind]
            for counted, name in zip(
                counters, (CATEGORIES[cats[i]], BRANDS[brands[i]]), strict=True
            ):
                counted[name] = counted.get(name, 0.0) + weight
                if len(counted) > COUNTERS:
                    del counted[min(counted, key=counted.__getitem__)]
        state = UserState(
            recent=list(recent.items())[-RECENT_ITEMS:],
            acted=acted,
            categories=counters[0],
            brands=counters[1],
            session_vector=vectors[j],
            updated_at=times[-1],
        )
        top = sorted(counters[0], key=lambda c: (-counters[0][c], c))[:3]
        bought = len(acted.get("purchase", ()))
        tokens = [*(f"bc={c}" for c in top), f"pb={1 + int(np.log2(1 + keys[at] % 500))}"]
        tokens.append(f"np={int(np.log2(1 + bought))}")
        at += n
        yield shopper_id(start + j), state.to_bytes(), msgpack.packb(tokens)


def fill(engine: Engine, start: int, stop: int) -> dict[str, float]:
    """COPY shoppers ``start`` to ``stop`` into both tables, BATCH rows per transaction."""
    now, state_bytes, began = time.time(), 0, time.perf_counter()
    raw = engine.raw_connection()
    try:
        pg = raw.driver_connection
        assert isinstance(pg, psycopg.Connection), "COPY needs the psycopg driver"
        pg.execute("SET synchronous_commit = off")  # the loader's commits need not wait
        with tqdm(total=stop - start, desc=f"COPY to {stop:,}", unit="row", unit_scale=True) as bar:
            for first in range(start, stop, BATCH):
                count = min(BATCH, stop - first)
                with pg.cursor() as cur:
                    rows = list(shoppers(first, count, now))
                    with cur.copy(
                        "COPY user_states (user_id, version, state, updated_at) "
                        "FROM STDIN (FORMAT BINARY)"
                    ) as copy:
                        copy.set_types(["varchar", "int8", "bytea", "float8"])
                        for user, state, _ in rows:
                            copy.write_row((user, 1, state, now))
                            state_bytes += len(state)
                    with cur.copy(
                        "COPY user_profiles (user_id, features, updated_at) "
                        "FROM STDIN (FORMAT BINARY)"
                    ) as copy:
                        copy.set_types(["varchar", "bytea", "float8"])
                        for user, _, profile in rows:
                            copy.write_row((user, profile, now))
                pg.commit()
                bar.update(count)
        pg.autocommit = True
        pg.execute("VACUUM (ANALYZE) user_states, user_profiles")  # as autovacuum would
    finally:
        raw.close()
    return {
        "seconds": round(time.perf_counter() - began, 1),
        "state_bytes_mean": round(state_bytes / (stop - start), 1),
    }


def sizes(engine: Engine, rows: int) -> dict[str, Any]:
    """On-disk sizes of both tables, and whether they fit in shared_buffers or the page cache."""
    with engine.connect() as conn:
        out: dict[str, Any] = {}
        for table in ("user_states", "user_profiles"):
            heap, with_toast, indexes, total = conn.execute(
                text(
                    "SELECT pg_relation_size(t), pg_table_size(t), pg_indexes_size(t), "
                    "pg_total_relation_size(t) FROM CAST(:t AS regclass) t"
                ),
                {"t": table},
            ).one()
            out[table] = {
                "heap_mib": round(heap / 2**20, 1),
                "toast_mib": round((with_toast - heap) / 2**20, 1),
                "index_mib": round(indexes / 2**20, 1),
                "total_mib": round(total / 2**20, 1),
                "bytes_per_row": round(total / rows, 1),
                "index_bytes_per_row": round(indexes / rows, 1),
            }
        buffers = conn.execute(text("SELECT pg_size_bytes(current_setting('shared_buffers'))"))
        out["shared_buffers_mib"] = round(buffers.scalar_one() / 2**20, 1)
    meminfo = dict(line.split(":") for line in Path("/proc/meminfo").read_text().splitlines())
    out["mem_total_mib"] = round(int(meminfo["MemTotal"].split()[0]) / 1024, 1)
    both = sum(out[t]["total_mib"] for t in ("user_states", "user_profiles"))
    out["fits_shared_buffers"] = both <= out["shared_buffers_mib"]
    out["fits_page_cache"] = both <= 0.8 * out["mem_total_mib"]
    return out


def prewarm(engine: Engine) -> dict[str, Any]:
    """Read both tables and their keys' indexes into the page cache (``pg_prewarm``'s 'read'
    mode), as a server that has been answering for a while holds them: without it a fresh
    machine's first reads come from disk."""
    began = time.perf_counter()
    with engine.connect() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_prewarm"))
        blocks = sum(
            conn.execute(text("SELECT pg_prewarm(:r, 'read')"), {"r": relation}).scalar_one()
            for relation in (
                "user_states",
                "user_states_pkey",
                "user_profiles",
                "user_profiles_pkey",
            )
        )
        conn.commit()
    return {"blocks": blocks, "seconds": round(time.perf_counter() - began, 1)}


def _disk_sectors_read() -> int:
    return sum(int(p.read_text().split()[2]) for p in Path("/sys/block").glob("*/stat"))


def _blocks(engine: Engine) -> tuple[int, int]:
    """(shared_buffers hits, blocks read from the OS) of this database so far."""
    with engine.connect() as conn:
        hit, read = conn.execute(
            text(
                "SELECT blks_hit, blks_read FROM pg_stat_database"
                " WHERE datname = current_database()"
            )
        ).one()
    return int(hit), int(read)


def _backend_cpu(engine: Engine) -> Callable[[], float]:
    """CPU seconds of this database's server processes so far (the readers' backends)."""
    with engine.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ).scalars()
        found = list(pids)
    return lambda: sum(cpu_seconds(pid) for pid in found)


class Meter:
    """What happened on the machine from construction to ``read()``: where the pages came
    from, and the CPU of this process with its database backends and of everything else."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.backends = _backend_cpu(engine)
        self.blocks = _blocks(engine)
        self.sectors, self.load = _disk_sectors_read(), os.getloadavg()[0]
        self.wall, self.busy, self.ours = time.perf_counter(), machine_busy(), self._ours()

    def _ours(self) -> float:
        return cpu_seconds(os.getpid()) + self.backends()

    def read(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall
        ours = self._ours() - self.ours
        hits, reads = (b - a for a, b in zip(self.blocks, _blocks(self.engine), strict=True))
        return {
            "shared_buffers_hit": round(hits / max(1, hits + reads), 3),
            # The whole machine's disk reads, other sessions' included.
            "disk_mib_read": round((_disk_sectors_read() - self.sectors) * 512 / 2**20, 1),
            "cores_ours": round(ours / wall, 2),
            "cores_others": round(max(0.0, (machine_busy() - self.busy - ours) / wall), 2),
            "loadavg_1m": [round(self.load, 2), round(os.getloadavg()[0], 2)],
        }


def warm_up(reader: Callable[[list[list[str]]], list[float]], readers: int) -> None:
    """The pool, SQLAlchemy's statement cache and psycopg's prepared statements, on shoppers
    other than the timed ones."""
    reader(
        [[shopper_id(readers * n + k) for n in range(WARM_UP // readers)] for k in range(readers)]
    )


def measure(
    engine: Engine, reader: Callable[[list[list[str]]], list[float]], ids: list[list[str]]
) -> dict[str, Any]:
    """Latency of ``reader`` over each reader's ``ids``, after a warm-up."""
    warm_up(reader, len(ids))
    meter, began = Meter(engine), time.perf_counter()
    seconds = reader(ids)
    out: dict[str, Any] = latency(seconds)
    out["reads_per_s"] = round(len(seconds) / (time.perf_counter() - began))
    return out | meter.read()


def interleaved(
    engine: Engine,
    layers: dict[str, Callable[..., Any]],
    rows: int,
    reads: int,
    rng: np.random.Generator,
    rounds: int = 10,
) -> dict[str, Any]:
    """Each layer's latency, the layers taking turns in ``rounds`` blocks of reads: a shared
    machine's load then falls on all of them alike."""
    out: dict[str, Any] = {}
    for readers in (1, 2):
        for reader in layers.values():
            warm_up(reader, readers)
        seconds: dict[str, list[float]] = {name: [] for name in layers}
        meter = Meter(engine)
        for _ in range(rounds):
            for name, reader in layers.items():
                picks = rng.integers(rows, size=reads // rounds).tolist()
                seconds[name] += reader(
                    [[shopper_id(i) for i in picks[k::readers]] for k in range(readers)]
                )
        kind = f"{readers} reader{'s' * (readers > 1)}"
        for name in layers:
            out[f"{name}, {kind}"] = latency(seconds[name])
        out[f"load, {kind}"] = meter.read()
        say(f"{rows:,} rows, alternatives, {kind}: {out[f'load, {kind}']}")
    return out


def in_threads(run: Callable[[list[str]], list[float]], ids: list[list[str]]) -> list[float]:
    """``run`` on each list of ids, each in a thread of its own, all at once."""
    found: list[list[float]] = [[] for _ in ids]

    def one(mine: list[str], out: list[float]) -> None:
        out.extend(run(mine))

    threads = [threading.Thread(target=one, args=p) for p in zip(ids, found, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [s for out in found for s in out]


def statement(engine: Engine, read: Callable[[Any, str], object] = read_user) -> Callable[..., Any]:
    """``read`` on a connection the reader holds (its transaction ends between reads, untimed)."""

    def run(mine: list[str]) -> list[float]:
        out, clock = [], time.perf_counter
        with engine.connect() as conn:
            for user in mine:
                began = clock()
                read(conn, user)
                out.append(clock() - began)
                conn.rollback()
        return out

    return partial(in_threads, run)


def checkout(parts: Parts, read: Callable[..., object] = read_user) -> Callable[..., Any]:
    """``Parts._run(point=True)``: a connection from the point reads' pool for each read, as a
    slate's read takes one."""

    def run(mine: list[str]) -> list[float]:
        out, clock = [], time.perf_counter
        for user in mine:
            began = clock()
            parts._run(partial(read, user_id=user), point=True)
            out.append(clock() - began)
        return out

    return partial(in_threads, run)


def slate(parts: Parts, on_loop: bool = True) -> Callable[..., Any]:
    """``Parts.user``, awaited by one task per reader on one event loop, as requests are; with
    ``on_loop`` False, by SQLAlchemy through a worker thread."""

    async def run(mine: list[str]) -> list[float]:
        out, clock = [], time.perf_counter
        for user in mine:
            began = clock()
            await parts.user(user)
            out.append(clock() - began)
        return out

    async def together(ids: list[list[str]]) -> list[float]:
        parts.users = UserStates()  # each run starts with no decoded state cached
        # A pool of the loop's connections per run: each run has an event loop of its own.
        parts.user_reader = UserReader(parts.engine) if on_loop else None
        try:
            found = await asyncio.gather(*(run(mine) for mine in ids))
        finally:
            if parts.user_reader is not None:
                await parts.user_reader.close()
        return [s for out in found for s in out]

    return lambda ids: asyncio.run(together(ids))


def reading_parts(engine: Engine, spool: Path, point_engine: Engine | None = None) -> Parts:
    """A ``Parts`` holding only what ``Parts.user`` and ``Parts._run`` use: building the VW
    policy, the item index and the background jobs would measure nothing more here."""
    parts = Parts.__new__(Parts)
    parts.engine = engine
    parts.point_engine = point_reader(engine) if point_engine is None else point_engine
    parts.outage = Outage(engine, spool, max_bytes=2**20, timeout=5.0)
    parts.users = UserStates()
    return parts


def on_loop(engine: Engine) -> Callable[..., Any]:
    """The floor: the same statement by psycopg's async connection on the event loop itself,
    outside any transaction and prepared, then decoded (no pool, no thread, no cache)."""
    sql = str(READ_USER.compile(dialect=engine.dialect))
    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def run(mine: list[str]) -> list[float]:
        out, clock = [], time.perf_counter
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            for user in mine:
                began = clock()
                cursor = await conn.execute(sql, {"user_id": user}, prepare=True)
                row = await cursor.fetchone()
                if row is not None and row[1] is not None:
                    UserState.from_bytes(row[1])
                out.append(clock() - began)
        return out

    async def together(ids: list[list[str]]) -> list[float]:
        found = await asyncio.gather(*(run(mine) for mine in ids))
        return [s for out in found for s in out]

    return lambda ids: asyncio.run(together(ids))


def product(engine: Engine, spool: Path) -> dict[str, Callable[..., Any]]:
    parts = reading_parts(engine, spool)
    return {"statement": statement(engine), "checkout": checkout(parts), "slate": slate(parts)}


def alternatives(engine: Engine, spool: Path) -> dict[str, Callable[..., Any]]:
    """What the product's read was, and what it might be, each measured as the product is:
    ``through a thread`` is ``Parts.user`` reading by SQLAlchemy on a worker thread (the
    product's read on PostgreSQL until the loop's own reader), from the point reads' pool or
    (``pre-ping``) from the writers' pool, which pings every connection it hands out;
    ``one lookup`` reads both tables' columns in one join (``read_user_joined``); the last is
    the floor, psycopg on the loop with one connection and no pool, no timeout, no cache."""
    pinged = reading_parts(
        engine, spool, point_engine=engine.execution_options(isolation_level="AUTOCOMMIT")
    )
    product = reading_parts(engine, spool)
    return {
        "slate, through a thread": slate(product, on_loop=False),
        "slate, through a thread, pre-ping": slate(pinged, on_loop=False),
        "checkout, pre-ping": checkout(pinged),
        "checkout, one lookup": checkout(product, read=read_user_joined),
        "async psycopg on the loop": on_loop(engine),
    }


def _read_user_joined() -> Select[Any]:
    user = bindparam("user_id", type_=user_states.c.user_id.type)
    one = select(literal_column("1").label("one")).subquery()
    joined = one.outerjoin(user_states, user_states.c.user_id == user).outerjoin(
        user_profiles, user_profiles.c.user_id == user
    )
    return select(user_states.c.version, user_states.c.state, user_profiles.c.features).select_from(
        joined
    )


READ_USER_JOINED = _read_user_joined()


def read_user_joined(conn: Any, user_id: str) -> UserRead:
    """``read_user`` by one statement joining both tables to a one-row relation by key: each
    table's index descended once, where ``READ_USER``'s subquery per column descends
    ``user_states``' twice."""
    return user_read(conn.execute(READ_USER_JOINED, {"user_id": user_id}).one())


def at_size(
    engine: Engine,
    layers: dict[str, Callable[..., Any]],
    rows: int,
    reads: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Each layer's latency for shoppers drawn uniformly from ``rows``: one reader, two, and
    one reader asking for shoppers never seen."""

    def draw(readers: int, make: Callable[[int], str] = shopper_id) -> list[list[str]]:
        picks = rng.integers(rows, size=reads).tolist()
        return [[make(i) for i in picks[k::readers]] for k in range(readers)]

    kinds = {
        "1 reader": (1, shopper_id),
        "2 readers": (2, shopper_id),
        "unknown shopper": (1, unknown_id),
    }
    out: dict[str, Any] = {}
    for layer, reader in layers.items():
        for kind, (readers, make) in kinds.items():
            out[f"{layer}, {kind}"] = found = measure(engine, reader, draw(readers, make))
            say(f"{rows:,} rows, {layer}, {kind}: {found}")
    return out


def table(results: dict[str, Any]) -> str:
    """The run as Markdown: each layer at each size, then the alternatives."""
    lines = [
        "| rows | layer | 1 reader: p50 / p99 / p99.9 ms | 2 readers: p50 / p99 / p99.9 ms "
        "| unknown shopper: p50 / p99 ms |",
        "|---:|---|---|---|---|",
    ]
    for rows, found in results["sizes"].items():
        reads = found["reads"]
        for layer in ("statement", "checkout", "slate"):
            one, two, miss = (
                reads[f"{layer}, {kind}"] for kind in ("1 reader", "2 readers", "unknown shopper")
            )
            lines.append(
                f"| {int(rows):,} | {layer} | {_ms(one)} | {_ms(two)} "
                f"| {miss['p50']} / {miss['p99']} |"
            )
    if "alternatives" in results:
        reads = results["alternatives"]["reads"]
        lines += [
            "",
            f"Alternatives at {results['alternatives']['rows']:,} rows, taking turns:",
            "",
            "| read | 1 reader: p50 / p99 / p99.9 ms | 2 readers: p50 / p99 / p99.9 ms |",
            "|---|---|---|",
        ]
        for name in (key.removesuffix(", 1 reader") for key in reads if key.endswith("1 reader")):
            if name != "load":
                lines.append(
                    f"| {name} | {_ms(reads[f'{name}, 1 reader'])} "
                    f"| {_ms(reads[f'{name}, 2 readers'])} |"
                )
    return "\n".join(lines)


def _ms(found: dict[str, float]) -> str:
    return f"{found['p50']} / {found['p99']} / {found['p99.9']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--sizes", default="", help="comma-separated row counts, grown in turn")
    parser.add_argument("--reads", type=int, default=20_000, help="timed reads per measurement")
    parser.add_argument("--server", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="slatebandit_users_bench")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--reuse", action="store_true", help="continue with the rows a kept database holds"
    )
    parser.add_argument(
        "--prewarm", action="store_true", help="read the tables into the page cache first"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--alternatives", action="store_true", help="also time changes to the read (last size)"
    )
    args = parser.parse_args()
    steps = sorted(int(n) for n in args.sizes.split(",")) if args.sizes else [args.rows]

    admin = create_engine(f"{args.server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": args.database}
        ).scalar()
        if exists and not args.reuse:
            conn.execute(text(f'DROP DATABASE "{args.database}"'))
        if not exists or not args.reuse:
            conn.execute(text(f'CREATE DATABASE "{args.database}"'))
    results: dict[str, Any] = {
        "command": "python -m benchmarks.user_state_scale "
        + (f"--sizes {args.sizes}" if args.sizes else f"--rows {args.rows}")
        + " --alternatives" * args.alternatives
        + " --reuse" * args.reuse
        + " --prewarm" * args.prewarm,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "sizes": {},
    }
    engine = open_engine(f"{args.server}/{args.database}")
    try:
        with engine.connect() as conn:
            results["machine"]["postgresql"] = conn.execute(text("SHOW server_version")).scalar()
            loaded = conn.execute(text("SELECT count(*) FROM user_states")).scalar_one()
        rng = np.random.default_rng(7)
        with tempfile.TemporaryDirectory(prefix="slatebandit-users-") as spool:
            layers = product(engine, Path(spool))
            for rows in steps:
                if rows < loaded:
                    say(f"{rows:,} rows: skipped, the table already holds {loaded:,}")
                    continue
                load = fill(engine, loaded, rows) if rows > loaded else None
                loaded = rows
                found = {"load": load, "sizes": sizes(engine, rows)}
                if args.prewarm:
                    found["prewarm"] = prewarm(engine)
                say(f"{rows:,} rows loaded: {found}")
                found["reads"] = at_size(engine, layers, rows, args.reads, rng)
                results["sizes"][str(rows)] = found
            if args.alternatives:
                others = {
                    "checkout": layers["checkout"],
                    "slate": layers["slate"],
                    **alternatives(engine, Path(spool)),
                }
                found = interleaved(engine, others, loaded, args.reads, rng)
                results["alternatives"] = {"rows": loaded, "reads": found}
    finally:
        engine.dispose()
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)'))
    runs = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": [*runs, results]}, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
