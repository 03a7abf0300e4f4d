"""Users' batch features, computed by the embedding job from their whole interaction history.

Three kinds of VW tokens per user, beside the online state's (``UserState``):
    bc=CATEGORY   the three categories they interacted with most (weighted by event type)
    pb=N          the median price band of the items they interacted with
    np=N          their purchases, as a log2 band (0, 1, 2-3, 4-7, ...)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from slatebandit.retrieval.content import price_bucket

TOP_CATEGORIES = 3


def batch_profiles(
    users: np.ndarray,
    items: np.ndarray,
    weights: np.ndarray,
    kinds: np.ndarray,
    facts: Mapping[int, tuple[str, float | None]],
) -> dict[str, list[str]]:
    affinity: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    bands: dict[str, list[int]] = defaultdict(list)
    purchases: dict[str, int] = defaultdict(int)
    for user, key, weight, kind in zip(
        users.tolist(), items.tolist(), weights.tolist(), kinds.tolist(), strict=True
    ):
        category, price = facts.get(key, ("", None))
        if category:
            affinity[user][category] += weight
        if price is not None:
            bands[user].append(price_bucket(price))
        if kind == "purchase":
            purchases[user] += 1
    out = {}
    # Users in the dicts' order (as first seen), not a set's: a set of strings iterates in an
    # order salted per process (PYTHONHASHSEED), and the job writes its rows in this order.
    for user in dict.fromkeys([*affinity, *bands, *purchases]):
        top = sorted(affinity[user], key=lambda c: (-affinity[user][c], c))[:TOP_CATEGORIES]
        tokens = [f"bc={c}" for c in top]
        if bands[user]:
            tokens.append(f"pb={int(np.median(bands[user]))}")
        tokens.append(f"np={int(np.log2(1 + purchases[user]))}")
        out[user] = tokens
    return out
