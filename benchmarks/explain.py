"""What explanations cost: the per-slot reasons every slate carries, and ``?explain=true``.

    python -m benchmarks.explain [--items 100000] [--slates 3000] [--k 10]

A demo catalog of ``--items`` items in a real hnswlib index, a VW model trained on a few
thousand synthetic slot examples (so scores and contributions are not all zero), and
shoppers of three kinds in turn: new (no history), with a session of three items, and with a
session of five. For each request: candidates (200), the VW policy's slate, then
``explain.reasons`` (timed: what every slate pays) and ``explain.contributions`` (timed: what
``?explain=true`` adds). The slate itself is timed for scale. Figures go to stdout and
benchmarks/results/explain.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from slatebandit.bandit import Exploration, SharedFeatures, VWScorer, action_features, slot_example
from slatebandit.config import Settings
from slatebandit.logging import load_items, open_engine
from slatebandit.policies import Query, VWPolicy
from slatebandit.policies.explain import contributions, reasons
from slatebandit.retrieval import ItemStore, generate
from slatebandit.retrieval.demo import demo_items

RESULTS = Path(__file__).parent / "results" / "explain.json"


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "max_ms": round(float(ms.max()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--slates", type=int, default=3000)
    parser.add_argument("--detailed", type=int, default=300, help="slates with ?explain=true")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    settings = Settings.from_env({})
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine(f"sqlite:///{tmp}/explain.db")
        load_items(engine, demo_items(args.items), total=args.items, desc="catalog")
        store = ItemStore.open(engine, None, progress=True)
        catalog = store.catalog
        live = np.flatnonzero(catalog.available)
        for key in rng.choice(live, 2000, replace=False):
            catalog.bump_popularity(int(key), float(rng.integers(1, 50)))
        scorer = VWScorer(settings.vw_args)
        now = time.time()
        for i in tqdm(range(5000), desc="train VW", unit="example"):
            key = int(rng.choice(live))
            code = int(catalog.dynamic_codes(np.asarray([key]), now)[0])
            shared = SharedFeatures.build({"device": ["mobile", "desktop"][i % 2]}, at=now)
            features = action_features(catalog.features[key], code)
            scorer.learn(slot_example(shared, i % 10, features, float(key % 7 == 0), 0.1))
        policy = VWPolicy(
            scorer, Exploration("epsilon", 0.05), settings.explore_slots, settings.diverse_slots
        )
        timings: dict[str, list[float]] = {"slate": [], "reasons": [], "contributions": []}
        for n in tqdm(range(args.slates), desc="slates", unit="slate"):
            seeds = [int(k) for k in rng.choice(live, (0, 3, 5)[n % 3], replace=False)]
            shared = SharedFeatures.build({"device": "mobile", "page": "home"}, at=now)
            candidates = generate(store, None, seeds, set(), settings.candidates)
            query = Query(shared, candidates)
            started = time.perf_counter()
            slate = policy.slate(store, query, args.k, rng)
            timings["slate"].append(time.perf_counter() - started)
            started = time.perf_counter()
            why = reasons(slate, store, seeds)
            timings["reasons"].append(time.perf_counter() - started)
            assert len(why) == len(slate.picks) and all(why)
            if n < args.detailed:
                started = time.perf_counter()
                contributions(policy, slate, store, query)
                timings["contributions"].append(time.perf_counter() - started)
        engine.dispose()
    result = {
        "items": args.items,
        "k": args.k,
        "candidates": settings.candidates,
        "slates": args.slates,
        **{name: percentiles(samples) for name, samples in timings.items()},
    }
    print(json.dumps(result, indent=2))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
