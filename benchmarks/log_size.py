"""Bytes per logged decision (k=10 from 200 candidates), on SQLite and optionally PostgreSQL.

    python -m benchmarks.log_size [--decisions 5000] [--items 50000] [--pg URL]

Serves slates in process (TestClient, so the lifespan and group commit run as in production)
to users with some history, then divides the growth of the database by the number of decisions.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, text
from starlette.testclient import TestClient
from tqdm import tqdm

from slatebandit.config import Settings
from slatebandit.logging import DecisionPayload, load_items, open_engine
from slatebandit.logging.schema import decisions
from slatebandit.retrieval.demo import demo_items
from slatebandit.server import create_app


def _sqlite_bytes(path: Path) -> int:
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    engine.dispose()
    return path.stat().st_size


def _pg_parts(url: str) -> dict[str, int]:
    """Bytes of the decisions and slots tables (every partition), rows and indexes apart."""
    engine = create_engine(url)
    parts = {}
    with engine.connect() as conn:
        for table in ("decisions", "slots"):
            rows, indexes = conn.execute(
                text(
                    "SELECT sum(pg_table_size(relid)), sum(pg_indexes_size(relid)) "
                    "FROM pg_partition_tree(:t) WHERE isleaf"
                ),
                {"t": table},
            ).one()
            parts[f"{table} rows"], parts[f"{table} indexes"] = int(rows), int(indexes)
    engine.dispose()
    return parts


def _pg_bytes(url: str) -> int:
    return sum(_pg_parts(url).values())


def measure(db_url: str | None, data_dir: Path, n_items: int, n_decisions: int) -> dict[str, Any]:
    settings = Settings.from_env({}, data_dir=data_dir, db_url=db_url, seed=1)
    engine = open_engine(settings.database_url)
    load_items(engine, demo_items(n_items), total=n_items)
    engine.dispose()
    sqlite_path = data_dir / "slatebandit.db"
    size = (lambda: _sqlite_bytes(sqlite_path)) if db_url is None else (lambda: _pg_bytes(db_url))
    rng = random.Random(0)
    with TestClient(create_app(settings)) as client:
        for u in range(200):  # users with history, so every generator contributes
            for _ in range(3):
                item = f"sku-{rng.randrange(n_items):07d}"
                client.post(
                    "/v1/events", json={"user_id": f"u{u}", "item_id": item, "type": "view"}
                )
        before = size()
        parts_before = _pg_parts(db_url) if db_url else {}
        for i in tqdm(range(n_decisions), desc="decisions"):
            body = client.post(
                "/v1/slates",
                json={
                    "user_id": f"u{i % 200}",
                    "k": 10,
                    "context": {"device": "mobile", "page": "home"},
                },
            ).json()
            assert len(body["items"]) == 10
        after = size()
        parts_after = _pg_parts(db_url) if db_url else {}
    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        payloads = conn.execute(select(decisions.c.payload)).scalars().all()
    engine.dispose()
    mean_candidates = sum(len(DecisionPayload.decode(p).candidate_revs) for p in payloads) / len(
        payloads
    )
    return {
        "decisions": n_decisions,
        "bytes_per_decision": (after - before) / n_decisions,
        "mean_candidates": mean_candidates,
        "mean_payload_bytes": sum(map(len, payloads)) / len(payloads),
        "parts": {
            name: (parts_after[name] - parts_before[name]) / n_decisions for name in parts_after
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument(
        "--pg", help="also measure on this PostgreSQL URL (tables are created there)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(None, Path(tmp), args.items, args.decisions)
        _report("SQLite", result)
    if args.pg:
        with tempfile.TemporaryDirectory() as tmp:
            result = measure(args.pg, Path(tmp), args.items, args.decisions)
            _report("PostgreSQL", result)


def _report(name: str, result: dict[str, Any]) -> None:
    print(
        f"{name}: {result['bytes_per_decision']:.0f} bytes per decision (tables and indexes) over "
        f"{result['decisions']:.0f} decisions with k=10 and {result['mean_candidates']:.0f} "
        f"candidates on average; msgpack payload {result['mean_payload_bytes']:.0f} bytes"
    )
    for part, size in result["parts"].items():
        print(f"  {part}: {size:.0f} bytes per decision")


if __name__ == "__main__":
    main()
