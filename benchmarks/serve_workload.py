"""``benchmarks.serve``'s workload: users and request bodies, and phases 1 and 2 (the catalog
written, its index built).

Half of the slate requests come from new users (no history: popular and fresh candidates
only); the other half from users who first sent view/click events, so the similar and session
generators run too.
"""

from __future__ import annotations

import random
from typing import Any

from benchmarks.harness import (
    _now,
)

CONTEXTS = [
    {"device": "mobile", "page": "home"},
    {"device": "desktop", "page": "home"},
    {"device": "mobile", "page": "category"},
    {"device": "tablet", "page": "cart"},
]


class Workload:
    """Users and request bodies: half new users, half users with a history of events."""

    def __init__(self, n_items: int, requests: int, seed: int) -> None:
        self.n_items = n_items
        self.rng = random.Random(seed)
        self.warm_users = [f"warm-{j}" for j in range(max(1, requests // 8))]

    def item_id(self) -> str:
        return f"sku-{self.rng.randrange(self.n_items):07d}"

    def events(self) -> list[dict[str, str]]:
        """3-8 views and clicks per warm user, in a shuffled order."""
        out = []
        for user in self.warm_users:
            for _ in range(self.rng.randint(3, 8)):
                kind = "click" if self.rng.random() < 0.3 else "view"
                out.append({"user_id": user, "item_id": self.item_id(), "type": kind})
        self.rng.shuffle(out)
        return out

    def slates(self, n: int, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        """``n`` (kind, body) pairs, alternating new and warm users."""
        out = []
        for i in range(n):
            if i % 2 == 0:
                kind, user = "new", f"{prefix}-new-{i}"
            else:
                kind, user = "warm", self.rng.choice(self.warm_users)
            body = {"user_id": user, "k": 10, "context": dict(self.rng.choice(CONTEXTS))}
            out.append((kind, body))
        return out


def write_catalog(engine: Any, n: int) -> float:
    from slatebandit.logging import load_items
    from slatebandit.retrieval.demo import demo_items

    start = _now()
    load_items(engine, demo_items(n), total=n, desc="catalog write")
    return _now() - start


def build_index(engine: Any, settings: Any) -> tuple[float, int]:
    from slatebandit.recommender import index_path
    from slatebandit.retrieval import ItemStore

    start = _now()
    store = ItemStore.open(
        engine, index_path(settings), fresh_impressions=settings.fresh_impressions, progress=True
    )
    seconds = _now() - start
    return seconds, len(store.index)
