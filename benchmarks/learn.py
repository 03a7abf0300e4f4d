"""Learner throughput: decisions (k=10, 200 candidates) learned per second from the SQL log.

    python -m benchmarks.learn [--decisions 20000] [--items 20000] [--db URL]

Writes a catalog and synthetic logged decisions straight into a fresh database (as serving
would: payloads with 200 candidate revisions, 10 shown slots, rewards on 5% of them), then
times ``Learner.run_due`` over all of them and one checkpoint. The budget is 1,000 decisions/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from sqlalchemy import select

from slatebandit.bandit import FEATURE_SPEC_VERSION
from slatebandit.config import Settings
from slatebandit.logging import (
    DecisionPayload,
    DecisionRecord,
    ShownSlot,
    insert_reward,
    load_items,
    open_engine,
)
from slatebandit.logging.schema import items
from slatebandit.policies.learner import Learner
from slatebandit.retrieval.demo import demo_items


def write_log(engine, n_decisions: int, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        keys, revs = map(
            np.asarray, zip(*conn.execute(select(items.c.key, items.c.rev)).all(), strict=True)
        )
    now = time.time() - 3600
    for start in range(0, n_decisions, 1000):
        records = []
        for _ in range(min(1000, n_decisions - start)):
            pick = rng.choice(len(keys), 200, replace=False)
            chosen = np.arange(10)
            payload = DecisionPayload(
                context={
                    "c": {"hour": 13, "device": "mobile", "page": "home"},
                    "u": ["women/dresses"],
                },
                candidate_revs=revs[pick].astype(np.uint32),
                candidate_flags=np.ones(200, dtype=np.uint8),
                candidate_dynamic=np.zeros(200, dtype=np.uint8),
                scores=np.zeros(200, dtype=np.float16),
                layout="eedexeedex",
                exploration={"kind": "epsilon", "param": 0.05},
                chosen=chosen.astype(np.uint16),
                feature_spec=FEATURE_SPEC_VERSION,
            )
            shown = tuple(
                ShownSlot(j, int(keys[pick[j]]), 0.9 if j % 5 else 0.05, "exploit", "popular", 0.0)
                for j in range(10)
            )
            records.append(
                DecisionRecord(uuid.uuid4().hex, now, "u", "vw", 0, payload.encode(), shown)
            )
        with engine.begin() as conn:
            written = DecisionRecord.write_many(conn, records)
            for decision in written:
                for key in decision.item_keys:
                    if rng.random() < 0.05:
                        insert_reward(
                            conn,
                            decision_id=decision.decision_id,
                            item_key=key,
                            type="click",
                            reward=1.0,
                            created_at=now,
                        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--db", help="a database URL (default: SQLite in a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'learn.db'}"
        engine = open_engine(url)
        load_items(engine, demo_items(args.items), total=args.items)
        write_log(engine, args.decisions, np.random.default_rng(0))
        settings = Settings.from_env({}, db_url=url, reward_wait=0, checkpoint_every=10**9)
        learner = Learner(engine, settings, holder="bench")
        started = time.perf_counter()
        taken = learner.run_due()
        learned = time.perf_counter() - started
        learner.checkpoint()
        total = time.perf_counter() - started
        engine.dispose()
    print(
        f"learned {taken:,} decisions ({taken * 10:,} slots) in {learned:.1f} s: "
        f"{taken / learned:,.0f} decisions/s; with the final checkpoint {taken / total:,.0f}/s"
    )


if __name__ == "__main__":
    main()
