"""What a placement costs a slate: ``Recommender.decide`` for home, item, cart and category.

    python -m benchmarks.placements [--items 20000] [--slates 2000] [--carts 2000]
                                    [--data-dir DIR]

Opens a recommender on the demo catalog (made on first use, as ``benchmarks.slate_path``
does), records ``--carts`` shoppers' carts (three items each, as add-to-cart events) and
counts them as the bought-together job does, then asks for slates one at a time (so each
call's wall time is the server's time for a slate), the placements taking turns request by
request, so the box's noise falls on all of them alike: home, an item page, a cart of three,
a category page (a department or one of its categories), and each of those again as a second
page (with the first page's token). Prints p50, p99 and mean per placement, and how long a
starting worker's first bought-together refresh takes over those carts (it runs on the job's
thread, not the slate path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.slate_path import demo_copy, workload
from slatebandit.config import Settings
from slatebandit.retrieval.demo import DEPARTMENTS
from slatebandit.retrieval.together import Together

PLACEMENTS = ("home", "item", "cart", "category")


def requests(n: int, items: int, carted: list[str], seed: int = 5) -> list[dict[str, Any]]:
    """``n`` rounds of one request per placement, on ``benchmarks.slate_path``'s workload."""
    rng = np.random.default_rng(seed)
    prefixes = [*DEPARTMENTS, *(f"{d}/{c}" for d, cs in DEPARTMENTS.items() for c in cs)]
    rounds = []
    for body in workload(n):
        item = f"sku-{rng.integers(items):07d}"
        cart = [str(i) for i in rng.choice(carted, size=3, replace=False)]
        fields = {
            "home": {},
            "item": {"placement": "item", "item_id": item},
            "cart": {"placement": "cart", "cart": cart},
            "category": {"placement": "category", "category": str(rng.choice(prefixes))},
        }
        rounds.append({name: {**body, **fields[name]} for name in PLACEMENTS})
    return rounds


async def measure(settings: Settings, slates: int, carts: int, items: int) -> dict[str, Any]:
    from slatebandit.recommender import Recommender, SlateQuery

    recommender = await Recommender.open(settings)
    await recommender.start()
    rng = np.random.default_rng(9)
    carted = [f"sku-{k:07d}" for k in rng.choice(items, size=min(items, 3000), replace=False)]
    times: dict[str, list[float]] = {}
    try:
        for shopper in range(carts):
            for item in rng.choice(carted, size=3, replace=False):
                await recommender.event(f"cart-{shopper}", str(item), "add_to_cart")
        await asyncio.to_thread(recommender.together.refresh, recommender.engine)
        # What a starting worker's first refresh costs: every cart counted from scratch.
        start = time.perf_counter()
        counted = Together().refresh(recommender.engine)
        refresh_ms = 1000 * (time.perf_counter() - start)
        rounds = requests(slates + 100, items, carted)
        for i, round_ in enumerate(rounds):
            for name, body in round_.items():
                start = time.perf_counter()
                first = await recommender.decide(SlateQuery(**body))
                second_start = time.perf_counter()
                await recommender.decide(SlateQuery(**body, page_token=first.next_page))
                done = time.perf_counter()
                if i >= 100:  # the first rounds warm the caches up
                    times.setdefault(name, []).append(second_start - start)
                    times.setdefault(f"{name}, page 2", []).append(done - second_start)
    finally:
        await recommender.close()
    result: dict[str, Any] = {"items": items, "carts": carts}
    result["together_lists"] = len(recommender.together)
    result["first_refresh"] = {"actions": counted, "ms": round(refresh_ms, 1)}
    for name, seconds in times.items():
        ms = 1000 * np.asarray(seconds)
        result[name] = {
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3),
            "slates": len(ms),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.placements", description=__doc__)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--slates", type=int, default=2_000, help="per placement and page")
    parser.add_argument("--carts", type=int, default=2_000)
    parser.add_argument("--data-dir", type=Path, help="kept between runs (default: temporary)")
    args = parser.parse_args(argv)
    with demo_copy(args.data_dir, args.items, "slatebandit-placements-") as work:
        settings = Settings.from_env({}, data_dir=str(work), learner="off")
        result = asyncio.run(measure(settings, args.slates, args.carts, args.items))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
