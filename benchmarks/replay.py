"""Replay throughput: 1,000,000 logged slots with IPS, SNIPS and DR and a 1,000-sample
bootstrap, from SQL, in bounded memory. The budget is 60 s on the 2-core machine.

    python -m benchmarks.replay [--decisions 100000] [--k 10] [--candidates 200]
                                [--policies random,popular] [--estimators ips,snips,dr]
                                [--bootstrap 1000] [--db URL] [--processes N]

Writes a catalog and logged decisions straight into a fresh SQLite database, each slate built
by the real slate builder (epsilon-greedy over logger scores, explore and diverse slots), so
propensities are what serving would log; 5% of shown slots get a click. Then times
``slatebandit.replay.replay`` end to end (SQL reads, reward model pass, estimation) and reports
its peak RSS. Figures go to stdout and benchmarks/results/replay.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from sqlalchemy import insert, select
from tqdm import tqdm

from slatebandit.bandit import FEATURE_SPEC_VERSION, Exploration, build_slate, layout
from slatebandit.config import Settings
from slatebandit.logging import DecisionPayload, DecisionRecord, ShownSlot, load_items, open_engine
from slatebandit.logging.schema import items, rewards
from slatebandit.replay import ReplayOptions, replay
from slatebandit.retrieval import FRESH
from slatebandit.retrieval.demo import demo_items

RESULTS = Path(__file__).parent / "results" / "replay.json"


def write_log(engine, n: int, k: int, width: int, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        rows = conn.execute(select(items.c.key, items.c.rev, items.c.category)).all()
    keys = np.array([r.key for r in rows])
    revs = np.array([r.rev for r in rows])
    _, category = np.unique([r.category for r in rows], return_inverse=True)
    popularity = rng.zipf(1.5, len(keys)).clip(max=15).astype(np.uint8)
    exploration = Exploration("epsilon", epsilon=0.1)
    kinds = layout(k, (4, 9), (2, 7))
    letters = "".join({"exploit": "e", "explore": "x", "diverse": "d"}[kind] for kind in kinds)
    start_at = time.time() - 86_400
    for start in tqdm(range(0, n, 1000), desc="write log", unit="k decisions"):
        records, clicks = [], []
        for i in range(start, min(start + 1000, n)):
            pick = rng.choice(len(keys), width, replace=False)
            flags = np.where(rng.random(width) < 0.05, FRESH, 1).astype(np.uint8)
            scores = rng.normal(0.05, 0.02, width)
            picks = build_slate(
                scores, category[pick], (flags & FRESH) != 0, kinds, exploration, rng
            )
            payload = DecisionPayload(
                context={"c": {"hour": i % 24, "device": "mobile"}, "u": []},
                candidate_revs=revs[pick].astype(np.uint32),
                candidate_flags=flags,
                candidate_dynamic=(popularity[pick] << 4).astype(np.uint8),
                scores=scores.astype(np.float16),
                layout=letters,
                exploration=exploration.to_log(),
                chosen=np.array([p.index for p in picks], dtype=np.uint16),
                feature_spec=FEATURE_SPEC_VERSION,
            )
            shown = tuple(
                ShownSlot(j, int(keys[pick[p.index]]), p.propensity, p.kind, "similar", 0.0)
                for j, p in enumerate(picks)
            )
            records.append(
                DecisionRecord(
                    uuid.uuid4().hex,
                    start_at + i * 0.5,
                    f"u{i % 5000}",
                    "vw",
                    0,
                    payload.encode(),
                    shown,
                )
            )
            clicks.append([s.item_key for s in shown if rng.random() < 0.05])
        with engine.begin() as conn:
            decided = DecisionRecord.write_many(conn, records)
            rows_clicked = [
                {
                    "decision_id": d.decision_id,
                    "item_key": key,
                    "type": "click",
                    "reward": 1.0,
                    "created_at": start_at,
                }
                for d, keys_clicked in zip(decided, clicks, strict=True)
                for key in keys_clicked
            ]
            if rows_clicked:
                conn.execute(insert(rewards), rows_clicked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--policies", default="random,popular")
    parser.add_argument("--estimators", default="ips,snips,dr")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--db", help="reuse this database (default: a new one in a temp dir)")
    parser.add_argument(
        "--processes",
        type=int,
        default=min(os.cpu_count() or 1, 4),
        help="slices of the evaluation pass at once, as `slatebandit replay` (default: cores)",
    )
    args = parser.parse_args()

    url = args.db or f"sqlite:///{tempfile.mkdtemp(prefix='slatebandit-replay-')}/log.db"
    engine = open_engine(url)
    with engine.connect() as conn:
        empty = conn.execute(select(items.c.key).limit(1)).first() is None
    if empty:
        load_items(engine, demo_items(args.items, seed=1), total=args.items)
        write_log(engine, args.decisions, args.k, args.candidates, np.random.default_rng(0))
    settings = Settings.from_env({}, db_url=url, reward_wait=0)
    options = ReplayOptions(
        policies=tuple(args.policies.split(",")),
        estimators=tuple(args.estimators.split(",")),
        bootstrap=args.bootstrap,
        seed=0,
    )
    bar = tqdm(desc="replay", unit="decision")

    def progress(phase: str, done: int, total: int) -> None:
        bar.set_description(phase)
        bar.total = total
        bar.n = done
        bar.refresh()

    started = time.perf_counter()
    report = replay(engine, settings, options, progress, processes=args.processes)
    seconds = time.perf_counter() - started
    bar.close()
    figures = {
        "slots": report.n_slots,
        "decisions": report.n_decisions,
        "policies": list(options.policies),
        "estimators": list(options.estimators),
        "bootstrap": options.bootstrap,
        "processes": args.processes,
        "seconds": round(seconds, 2),
        "slots_per_second": round(report.n_slots / seconds),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "estimates": report.to_dict()["policies"],
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "estimates"}, indent=2))
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
