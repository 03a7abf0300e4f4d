"""The decision log at 1M and 10M decisions on PostgreSQL: does a decision's cost stay flat?

    python -m benchmarks.log_scale --pg URL [--sizes 1000000,10000000] [--per-day 1000000]

The database at URL is emptied and filled day by day, each day's decisions (k=10 slots each,
a click on one in 33) in that day's partition, written by the database itself (``INSERT ...
SELECT`` over realistic payloads: 200 candidates, encoded and compressed as serving does), so
that ten million take minutes instead of hours. At each size it measures, on the real code:

- insert: decisions/s through the real group-commit writer (64 concurrent submitters), the
  path every slate takes; they go into today's partition;
- learner: decisions/s that ``logging.learning.due_decisions`` reads (the learner's query),
  over the newest 20,000 of the newest full day;
- replay of one day: decisions/s that ``replay.log.read_chunks`` reads over the newest full
  day (its first 50,000), with the day's ``since``/``until`` window;
- gate: seconds for the release gate's held-out window (``replay.gate.held_out_window``);
- bytes per decision over every partition, and which partitions each query's plan reads.
At the end, retention: the seconds ``logging.partitions.drop_before`` takes to drop the
oldest day. Results go to benchmarks/results/log_scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, select, text
from tqdm import tqdm

from slatebandit.config import Settings
from slatebandit.logging import (
    DecisionPayload,
    DecisionRecord,
    GroupCommitWriter,
    ShownSlot,
    open_engine,
)
from slatebandit.logging.learning import due_decisions
from slatebandit.logging.partitions import (
    DAY,
    day_of,
    drop_before,
    ensure_days,
    first_id,
    made_since,
    new_event_id,
)
from slatebandit.logging.schema import decisions
from slatebandit.replay.gate import held_out_window
from slatebandit.replay.log import Window, read_chunks

RESULTS = Path(__file__).parent / "results" / "log_scale.json"
K, CANDIDATES, ITEMS, TEMPLATES = 10, 200, 100_000, 64
STEP = 100_000  # decisions per bulk statement


def payloads(seed: int = 0) -> list[bytes]:
    """Payloads as serving writes them: 200 candidates, context features, a few shifts."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(TEMPLATES):
        shift = np.zeros(CANDIDATES, dtype=np.float32)
        shift[rng.choice(CANDIDATES, 4, replace=False)] = -rng.random(4).astype(np.float32)
        out.append(
            DecisionPayload(
                context={
                    "c": {"hour": int(rng.integers(24)), "device": "mobile", "page": "home"},
                    "u": ["sport/yoga", "women/coats"],
                    "p": ["tc=sport/yoga:0.689", "tb=Kodor:0.357"],
                },
                candidate_revs=rng.integers(1, ITEMS, CANDIDATES).astype(np.uint32),
                # one or two generators per candidate; low popularity and age bands, as served
                candidate_flags=(
                    (1 << rng.integers(0, 5, CANDIDATES)) | (rng.random(CANDIDATES) < 0.2)
                ).astype(np.uint8),
                candidate_dynamic=(
                    (rng.integers(0, 4, CANDIDATES) << 4) | rng.integers(0, 3, CANDIDATES)
                ).astype(np.uint8),
                scores=None,
                layout="eeeeeeexdd",
                exploration={"kind": "epsilon", "epsilon": 0.05},
                chosen=rng.choice(CANDIDATES, K, replace=False).astype(np.uint16),
                feature_spec=3,
                shift=shift,
            ).encode()
        )
    return out


def fill_day(engine: Engine, day: int, count: int, templates: list[bytes]) -> None:
    """``count`` decisions made through ``day``, with their slots and clicks."""
    base, start = first_id(day), float(day * DAY)
    step = DAY / count
    for lo in tqdm(range(0, count, STEP), desc=f"day {day}", unit_scale=STEP):
        hi = min(lo + STEP, count)
        params = {"base": base, "lo": lo + 1, "hi": hi, "t0": start, "step": step}
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO decisions (id, event_id, created_at, user_id, policy, "
                    "model_version, payload, placement) "
                    "SELECT :base + g, lpad(to_hex((:t0 + (g - 1) * :step)::bigint), 8, '0') "
                    "|| substr(md5(g::text), 1, 24), :t0 + (g - 1) * :step, 'u' || (g % 1000003), "
                    "'vw', 1, (:payloads)[1 + g % :n], 'home' FROM generate_series(:lo, :hi) g"
                ),
                {**params, "payloads": templates, "n": len(templates)},
            )
            conn.execute(
                text(
                    "INSERT INTO slots SELECT :base + g, s, ((g * 7 + s * 131) % :items)::int, "
                    "0.05, 'exploit', 'ann', 0.3 "
                    "FROM generate_series(:lo, :hi) g, generate_series(0, :k - 1) s"
                ),
                {**params, "items": ITEMS, "k": K},
            )
            conn.execute(
                text(
                    "INSERT INTO rewards (decision_id, item_key, type, reward, created_at) "
                    "SELECT :base + g, (g * 7) % :items, 'click', 1.0, :t0 + (g - 1) * :step + 30 "
                    "FROM generate_series(:lo, :hi) g WHERE g % 33 = 0"
                ),
                {**params, "items": ITEMS},
            )


def insert_rate(engine: Engine, templates: list[bytes], count: int = 20_000) -> float:
    """Decisions/s through the group-commit writer, 64 requests at a time."""
    shown = tuple(ShownSlot(s, (s * 131) % ITEMS, 0.05, "exploit", "ann", 0.3) for s in range(K))

    async def run() -> float:
        writer = GroupCommitWriter(engine)
        await writer.start()

        async def submitter(n: int, offset: int) -> None:
            for i in range(n):
                now = time.time()
                await writer.submit(
                    DecisionRecord(
                        new_event_id(now),
                        now,
                        f"u{offset + i}",
                        "vw",
                        1,
                        templates[(offset + i) % len(templates)],
                        shown,
                    )
                )

        began = time.perf_counter()
        await asyncio.gather(*(submitter(count // 64, j * count) for j in range(64)))
        seconds = time.perf_counter() - began
        await writer.stop()
        return (count // 64 * 64) / seconds

    return asyncio.run(run())


def learner_rate(
    engine: Engine, day: int, per_day: int, count: int = 20_000, batch: int = 1000
) -> float:
    after = first_id(day) + per_day - count  # the newest ``count`` of the day
    began, read = time.perf_counter(), 0
    with engine.connect() as conn:
        while read < count:
            due = due_decisions(conn, after, math.inf, batch)
            read += len(due)
            after = due[-1].decision_id
    return read / (time.perf_counter() - began)


def replay_rate(engine: Engine, day: int, count: int = 50_000) -> float:
    window = Window(since=float(day * DAY), until=float((day + 1) * DAY))
    began, read = time.perf_counter(), 0
    for chunk, _ in read_chunks(engine, window):
        read += len(chunk.decision_ids)
        if read >= count:
            break
    return read / (time.perf_counter() - began)


def gate_seconds(engine: Engine) -> float:
    settings = Settings.from_env({}, db_url=engine.url.render_as_string(hide_password=False))
    began = time.perf_counter()
    held_out_window(engine, settings, champion=1)
    return time.perf_counter() - began


def bytes_per_decision(engine: Engine) -> float:
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM decisions")).scalar_one()
        return (
            int(
                conn.execute(
                    text(
                        "SELECT sum(pg_table_size(relid) + pg_indexes_size(relid)) FROM ("
                        "SELECT relid FROM pg_partition_tree('decisions') WHERE isleaf UNION ALL "
                        "SELECT relid FROM pg_partition_tree('slots') WHERE isleaf) parts"
                    )
                ).scalar_one()
            )
            / stored
        )


def plans(engine: Engine, day: int) -> dict[str, dict[str, list[str]]]:
    """Which partitions each query plans to read, and which gave it rows, from its plan as
    run (EXPLAIN ANALYZE): the planner drops the partitions its bounds exclude; an id-ordered
    scan with a limit opens the others it keeps (one index probe each) and stops early."""
    settings = Settings.from_env({}, db_url=engine.url.render_as_string(hide_password=False))
    queries = {
        "learner (due_heads' query)": select(decisions.c.id, decisions.c.created_at)
        .where(decisions.c.id > first_id(day) + 1000)
        .order_by(decisions.c.id)
        .limit(1000),
        "replay of one day": select(decisions.c.id, decisions.c.payload)
        .where(*Window(since=float(day * DAY), until=float((day + 1) * DAY)).where())
        .order_by(decisions.c.id)
        .limit(20_000),
        "a reward's decision (event id)": select(decisions.c.id).where(
            decisions.c.event_id == new_event_id(day * DAY + 5),
            made_since(decisions.c.id, day * DAY + 5),
        ),
        "A/B report (an experiment started that day)": select(decisions.c.arm).where(
            decisions.c.experiment == "x", made_since(decisions.c.id, day * DAY)
        ),
        "gate held-out window": select(decisions.c.id)
        .where(*Window(every=settings.gate_holdout_every, model_version=1).where())
        .order_by(decisions.c.id.desc())
        .limit(settings.gate_decisions),
    }
    scan = re.compile(r"on decisions_(p\d{8}|default|legacy)")
    out = {}
    with engine.connect() as conn:
        for name, query in queries.items():
            compiled = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
            explain = f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {compiled}"
            plan = conn.exec_driver_sql(explain.replace("%%", "%").replace("%", "%%")).scalars()
            lines = list(plan)
            rows = [
                part
                for line in lines
                if "actual rows=0 " not in line and "never executed" not in line
                for part in scan.findall(line)
            ]
            out[name] = {
                "planned": sorted(set(scan.findall("\n".join(lines)))),
                "gave rows": sorted(set(rows)),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg", required=True, help="a PostgreSQL database to empty and fill")
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--per-day", type=int, default=1_000_000)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    engine = open_engine(args.pg, create=False)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    engine = open_engine(args.pg)
    templates = payloads()
    days_needed = math.ceil(max(sizes) / args.per_day)
    first_day = day_of(time.time()) - days_needed - 2
    with engine.begin() as conn:
        ensure_days(conn, range(first_day, first_day + days_needed))
    results: dict[str, Any] = {
        "per_day": args.per_day,
        "payload_bytes": float(np.mean([len(t) for t in templates])),
        "sizes": [],
    }
    filled = 0
    for size in sizes:
        while filled < size:
            day = first_day + filled // args.per_day
            fill_day(engine, day, args.per_day, templates)
            filled += args.per_day
        with engine.begin() as conn:  # committed: statistics as autovacuum would keep them
            conn.execute(text("ANALYZE"))
        newest = first_day + filled // args.per_day - 1
        row: dict[str, Any] = {
            "decisions": filled,
            "bytes_per_decision": bytes_per_decision(engine),
            "insert_per_s": insert_rate(engine, templates),
            "learner_per_s": learner_rate(engine, newest, args.per_day),
            "replay_day_per_s": replay_rate(engine, newest),
            "gate_window_s": gate_seconds(engine),
        }
        plans_of = plans(engine, newest)
        row["plans"] = plans_of
        results["sizes"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "plans"}), flush=True)
        for name, parts in plans_of.items():
            print(
                f"  {name}: plans {', '.join(parts['planned']) or 'no partition'}; "
                f"rows from {', '.join(parts['gave rows']) or 'none'}"
            )
    with engine.begin() as conn:
        began = time.perf_counter()
        dropped = drop_before(conn, float((first_day + 1) * DAY))
    results["retention"] = {
        "dropped": dropped,
        "seconds": time.perf_counter() - began,
        "decisions_per_day": args.per_day,
    }
    print("retention:", results["retention"])
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
