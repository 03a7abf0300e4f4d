"""A slate's scores two ways, in one process: VW's text (write the lines, VW parses, hashes and
predicts) against the numpy scorer (``bandit/linear.py``), on the same seeded slates.

    python -m benchmarks.scorer [--items 100000] [--slates 2000] [--candidates 200] [--rounds 3]

Trains a model with the default arguments on seeded slot examples over the demo catalog's
features, saves it and loads it as serving loads a version, then scores the same slates both
ways, taking turns round by round. Shoppers are as the soak's are after their history:
recent categories and valued profile tokens, crossed with every candidate. Prints µs per
slate for each: the numpy scorer warm (every item hashed before), and its first pass over the
slates, which hashes each item the first time it meets it ("first pass"); the largest
difference between the two scorers' answers; and what a version's load costs.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slatebandit.bandit import SharedFeatures, VWScorer, slot_example, valued, with_bands
from slatebandit.bandit.hashes import TokenHashes
from slatebandit.bandit.weights import read_weights
from slatebandit.config import Settings
from slatebandit.retrieval.content import item_tokens, scorer_features
from slatebandit.retrieval.demo import DEPARTMENTS, demo_items

RESULTS = Path(__file__).parent / "results" / "scorer.json"
CATEGORIES = [f"{d}/{c}" for d, cs in DEPARTMENTS.items() for c in cs]


def catalog(n: int) -> list[str]:
    """The scorer's static features of ``n`` demo items, as the catalog holds them."""
    return [
        scorer_features(key, item_tokens(i.category, i.brand, i.price, i.attributes))
        for key, i in enumerate(demo_items(n))
    ]


def shopper(rng: np.random.Generator) -> SharedFeatures:
    recent = [CATEGORIES[c] for c in rng.integers(0, len(CATEGORIES), 3)]
    tops = rng.integers(0, len(CATEGORIES), 3)
    profile = [
        *(valued(f"tc={CATEGORIES[c]}", float(rng.random())) for c in tops),
        *(valued(f"tb=brand{b}", float(rng.random())) for b in rng.integers(0, 300, 3)),
    ]
    context = {"device": str(rng.choice(["ios", "web"])), "page": "home", "placement": "home"}
    return SharedFeatures.build(context, recent, at=float(rng.integers(0, 10**9)), profile=profile)


def train(args: str, items: list[str], examples: int, seed: int = 0) -> VWScorer:
    rng = np.random.default_rng(seed)
    scorer = VWScorer(args)
    for _ in range(examples):
        key, code = int(rng.integers(len(items))), int(rng.integers(256))
        reward = float(key % 7 == 3 or rng.random() < 0.05)
        action = with_bands([items[key]], [code])[0]
        scorer.learn(slot_example(shopper(rng), int(rng.integers(10)), action, reward, 0.1))
    return scorer


@dataclass(eq=False)
class Shelf:
    """The two columns of a catalog the scorer reads (``bandit.hashes.Items``)."""

    features: list[str]
    rev: np.ndarray


def timed(score: Any, slates: list[tuple[SharedFeatures, np.ndarray, np.ndarray]]) -> float:
    """µs per slate of ``score(shared, keys, codes)`` over ``slates``."""
    start = time.perf_counter()
    for shared, keys, codes in slates:
        score(shared, keys, codes)
    return 1e6 * (time.perf_counter() - start) / len(slates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--slates", type=int, default=2_000)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--train", type=int, default=20_000, help="slot examples to learn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    vw_args = Settings.from_env({}).vw_args
    items = catalog(args.items)
    data = train(vw_args, items, args.train).to_bytes()

    loads, reads = [], []
    for _ in range(3):
        start = time.perf_counter()
        scorer = VWScorer(vw_args, model_bytes=data).prepare()  # as serving loads a version
        loads.append(time.perf_counter() - start)
        start = time.perf_counter()
        read_weights(scorer._vw, data)
        reads.append(time.perf_counter() - start)
    assert scorer.fast, "the default arguments must score without VW's text"

    rng = np.random.default_rng(1)
    slates = []
    for _ in range(args.slates):
        keys = rng.choice(len(items), args.candidates, replace=False)
        codes = rng.integers(0, 256, args.candidates).astype(np.uint8)
        slates.append((shopper(rng), keys, codes))
    shelf = Shelf(items, np.ones(len(items), dtype=np.int64))

    def text(shared: SharedFeatures, keys: np.ndarray, codes: np.ndarray) -> np.ndarray:
        statics = [items[k] for k in keys]  # as the catalog's column reads them
        return scorer.score(shared, with_bands(statics, codes.tolist()))

    def numpy(shared: SharedFeatures, keys: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return scorer.score_items(shared, shelf, keys, codes)

    TokenHashes._shared.clear()  # its first pass hashes every item it meets for the first time
    scorer = VWScorer(vw_args, model_bytes=data).prepare()
    cold = timed(numpy, slates)
    rounds: dict[str, list[float]] = {"VW's text": [], "numpy, warm": []}
    for _ in range(args.rounds):
        rounds["VW's text"].append(timed(text, slates))
        rounds["numpy, warm"].append(timed(numpy, slates))
    table = scorer._linear.hashes.table(shelf)  # type: ignore[union-attr]
    hashed = int(table.hashed.sum())
    held = sum(a.nbytes for a in (table.pool, table.rev, table.start, table.count, table.hashed))
    gap = max(float(np.abs(numpy(*slate) - text(*slate)).max()) for slate in slates[:200])
    result = {
        "items": args.items,
        "slates": args.slates,
        "candidates": args.candidates,
        "us_per_slate": {name: [round(t, 1) for t in times] for name, times in rounds.items()},
        "numpy_first_pass_us_per_slate": round(cold, 1),
        "largest_difference": gap,
        "version_load_ms": [round(1e3 * t, 1) for t in loads],
        "weights_read_ms": [round(1e3 * t, 1) for t in reads],
        "model_bytes": len(data),
        "items_hashed": hashed,
        "item_table_bytes_each": round(held / max(hashed, 1)),
    }
    print(f"{args.slates:,} slates of {args.candidates} candidates from {args.items:,} items")
    print("| scorer | µs per slate, by round |\n|---|---|")
    for name, times in rounds.items():
        print(f"| {name} | {', '.join(f'{t:,.0f}' for t in times)} |")
    print(f"| numpy, first pass (hashing each item met for the first time) | {cold:,.0f} |")
    print(f"largest difference between the two: {gap:.2e}")
    each = result["item_table_bytes_each"]
    print(f"items hashed: {hashed:,}; the item table holds {each} bytes for each")
    print(f"a version's load (VW's, then the weights read): {result['version_load_ms']} ms;")
    print(f"the weights read alone: {result['weights_read_ms']} ms ({len(data) / 2**20:.1f} MB)")
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
