"""What a reward's and an event's writes cost inside a group commit, statement by statement.

    python -m benchmarks.feedback_writes [--writes 2000] [--rounds 3] [--db URL]

Each round runs ``--writes`` of each in one transaction on a fresh SQLite file (or ``--db``):
``update_user_state`` (an event folded into its shopper's state, 500 shoppers),
``insert_event`` (each with its own ref) and ``insert_reward`` (one per decision, then five
duplicates, which must store nothing), and prints microseconds per write. The writer thread
spends this per unit of a batch while every slate of the batch waits for its commit. Run it
from a worktree of another revision (``python -m`` from there) to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from sqlalchemy import Engine, insert

from slatebandit.logging import open_engine
from slatebandit.logging.decisions import insert_event, insert_reward
from slatebandit.logging.schema import decisions, items
from slatebandit.logging.users import update_user_state


def one_round(engine: Engine, writes: int) -> dict[str, float]:
    run = os.urandom(4).hex()  # a round's own items, so that rounds can share a database
    with engine.begin() as conn:
        keys = [
            conn.execute(
                insert(items).values(item_id=f"{run}-{i}", rev=i, created_at=0.0, updated_at=0.0)
            ).inserted_primary_key[0]
            for i in range(100)
        ]
        ids = [
            conn.execute(
                insert(decisions).values(
                    event_id=os.urandom(16).hex(),
                    created_at=0.0,
                    user_id="u",
                    policy="p",
                    model_version=0,
                    payload=b"",
                )
            ).inserted_primary_key[0]
            for _ in range(writes)
        ]
    micros: dict[str, float] = {}
    with engine.begin() as conn:
        started = time.perf_counter()
        for i in range(writes):
            update_user_state(conn, f"u{i % 500}", lambda old: (old or b"")[-500:] + b"x")
        micros["update_user_state"] = (time.perf_counter() - started) / writes * 1e6
        started = time.perf_counter()
        for i in range(writes):
            insert_event(
                conn,
                user_id=f"u{i % 500}",
                item_key=keys[i % 100],
                type="view",
                created_at=time.time(),
                ref=os.urandom(16).hex(),
            )
        micros["insert_event"] = (time.perf_counter() - started) / writes * 1e6
        started = time.perf_counter()
        stored = [
            insert_reward(
                conn, decision_id=d, item_key=keys[0], type="click", reward=1.0, created_at=0.0
            )
            for d in ids
        ]
        micros["insert_reward"] = (time.perf_counter() - started) / writes * 1e6
        again = [
            insert_reward(
                conn, decision_id=d, item_key=keys[0], type="click", reward=1.0, created_at=0.0
            )
            for d in ids[:5]
        ]
    assert all(stored) and not any(again), "a reward stored twice, or not at all"
    return micros


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", help="a database URL (default: a new SQLite file each round)")
    args = parser.parse_args()
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as scratch:
            engine = open_engine(args.db or f"sqlite:///{scratch}/log.db")
            micros = one_round(engine, args.writes)
            engine.dispose()
        print(json.dumps({name: round(value, 1) for name, value in micros.items()}))


if __name__ == "__main__":
    main()
