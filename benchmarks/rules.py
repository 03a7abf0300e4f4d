"""What merchandising rules cost a slate: ``Recommender.decide`` with none and with N rules.

    python -m benchmarks.rules [--items 20000] [--rules 100] [--slates 2000] [--rounds 3]
                               [--data-dir DIR]

Opens a recommender on the demo catalog (made on first use, as ``benchmarks.slate_path``
does), then asks for slates one at a time (so each call's wall time is the server's time for
a slate) in alternating blocks: without rules, and with ``--rules`` rules in force at every
placement (a mix of every action: pins, promotions, boosts and buries by category and brand,
blocks of listed items). Both conditions run in the same process, alternating ``--rounds``
times, so the box's noise falls on both. Prints p50, p99 and mean per condition, the p99
difference, the CPU per slate of this process (less sensitive to the other processes of a
busy box than wall times are), and the time one compilation of the rules takes (which runs on
the rules job's thread, not on the slate path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.slate_path import demo_copy, workload
from slatebandit.config import Settings
from slatebandit.logging.rules import StoredRule, delete_rule, put_rule


def mixed_rules(n: int, categories: list[str], brands: list[str], items: int) -> list[StoredRule]:
    """``n`` rules of every action, cycling: 5% pins, 10% promotions, 35% boosts, 30% buries,
    20% blocks."""
    rng = np.random.default_rng(3)
    rules = []
    for i in range(n):
        share = i % 20
        if share == 0:
            body = {"action": "pin", "items": [f"sku-{rng.integers(items):07d}"], "slots": [i % 10]}
        elif share in (1, 2):
            body = {"action": "promote", "filter": {"category": [categories[i % len(categories)]]}}
            body["share"] = 0.1
        elif share < 10:
            body = {"action": "boost", "filter": {"brand": [brands[i % len(brands)]]}}
            body["weight"] = 0.3
        elif share < 16:
            body = {
                "action": "bury",
                "filter": {"category": [categories[-1 - i % len(categories)]]},
            }
            body["weight"] = 0.2
        else:
            listed = [f"sku-{k:07d}" for k in rng.integers(items, size=5)]
            body = {"action": "block", "items": listed}
        rules.append(StoredRule(f"rule-{i:03d}", 1, body, 0.0))
    return rules


async def measure(settings: Settings, n_rules: int, slates: int, rounds: int) -> dict[str, object]:
    from slatebandit.recommender import Recommender, SlateQuery

    recommender = await Recommender.open(settings)
    await recommender.start()
    queries = [SlateQuery(**body) for body in workload(5_000)]  # type: ignore[arg-type]
    catalog = recommender.store.catalog
    categories = sorted({c for c in catalog.category_names if c})
    brands = sorted({b for b in catalog.brand_names if b})
    rules = mixed_rules(n_rules, categories, brands, len(catalog))
    book = recommender.rules
    times: dict[str, list[float]] = {"none": [], "rules": []}
    cpu: dict[str, float] = {"none": 0.0, "rules": 0.0}  # this process's CPU seconds
    compile_ms = []

    def set_rules(on: bool) -> None:
        """Stored, as a PUT would, so the rules job keeps them; then compiled here at once."""
        with recommender.engine.begin() as conn:
            for rule in rules:
                if on:
                    put_rule(conn, rule.name, rule.body)
                else:
                    delete_rule(conn, rule.name)
        book.refresh(recommender.engine, catalog)
        start = time.perf_counter()
        book.compile(catalog, time.time())
        compile_ms.append(1000 * (time.perf_counter() - start))
        assert len(book.rules) == (len(rules) if on else 0)

    try:
        for query in queries[:300]:  # warm-up
            await recommender.decide(query)
        i = 0
        for _ in range(rounds):
            for condition in ("none", "rules"):
                if condition == "rules" or book.rules:
                    set_rules(condition == "rules")
                began = time.process_time()
                for _ in range(slates):
                    start = time.perf_counter()
                    await recommender.decide(queries[i % len(queries)])
                    times[condition].append(time.perf_counter() - start)
                    i += 1
                cpu[condition] += time.process_time() - began
    finally:
        await recommender.close()
    result: dict[str, object] = {"items": len(catalog), "n_rules": n_rules}
    for condition, seconds in times.items():
        ms = 1000 * np.asarray(seconds)
        result[condition] = {
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3),
            "cpu_ms_per_slate": round(1000 * cpu[condition] / len(ms), 3),
            "slates": len(ms),
        }
    none, ruled = result["none"], result["rules"]
    result["p99_added_ms"] = round(ruled["p99_ms"] - none["p99_ms"], 3)  # type: ignore[index]
    result["p50_added_ms"] = round(ruled["p50_ms"] - none["p50_ms"], 3)  # type: ignore[index]
    result["compile_ms"] = round(float(np.median(compile_ms[::2])), 1)  # with the rules
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rules", description=__doc__)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--slates", type=int, default=2_000, help="per block")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, help="kept between runs (default: temporary)")
    args = parser.parse_args(argv)
    with demo_copy(args.data_dir, args.items, "slatebandit-rules-") as work:
        settings = Settings.from_env({}, data_dir=str(work), learner="off")
        result = asyncio.run(measure(settings, args.rules, args.slates, args.rounds))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
