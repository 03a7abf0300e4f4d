"""Why an item is in a slate: a short reason for every slot, and on request the features
that made its score.

Reasons come from what is already known when the slate is built (the generator that proposed
the item, the slot's kind, whether the pick was the slot's best or an exploration), so they
cost a few microseconds per slot; "similar to X" finds X, the one of the shopper's seed items
nearest the pick, with one small matrix product.

Contributions (``?explain=true``) are ablations: for VW, a feature's contribution is how much
the item's score drops when that one feature is left out, its own weight plus every
interaction it takes part in (so an interaction's weight counts for both of its features).
They cost a few VW predicts per slate. ``popular``, ``content`` and ``blend`` report the score
they computed, by part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from slatebandit.bandit import (
    DIVERSE,
    EXPLOIT,
    EXPLORE,
    PINNED,
    PROMOTED,
    SharedFeatures,
    action_features,
)
from slatebandit.policies.base import Policy, Query, Slate
from slatebandit.policies.blend import Blend
from slatebandit.policies.simple import Content, Popular
from slatebandit.policies.vw import VWPolicy
from slatebandit.retrieval import FRESH, SOURCES, ItemStore, popularity_band

TOP_FEATURES = 5


def _category(store: ItemStore, key: int) -> str:
    catalog = store.catalog
    path = catalog.category_names[catalog.category[key]]
    leaf = path.rsplit("/", 1)[-1].strip()
    return leaf[:1].upper() + leaf[1:] if leaf else "this category"


def reasons(slate: Slate, store: ItemStore, seeds: Sequence[int]) -> list[str]:
    """One short, human-readable reason per pick. ``seeds``: the items the similar generator
    started from (the request's session items, then the shopper's recent ones)."""
    candidates = slate.candidates
    keys = candidates.keys
    nearest = _nearest_seeds(slate, store, seeds)
    scores = slate.scores.tolist()
    ranked = iter(np.argsort(-slate.scores, kind="stable").tolist())  # best first
    best, shown = next(ranked, None), set()
    context = [f"{k}={v}" for k, v in slate.shared.context.items() if k != "hour"][:2]
    out = []
    for pick in slate.picks:
        key = int(keys[pick.index])
        source = SOURCES[candidates.sources[pick.index]]
        fresh = bool(candidates.flags[pick.index] & FRESH)
        while best in shown:  # the best score among the candidates not yet shown
            best = next(ranked, None)
        top = 0.0 if best is None else scores[best]
        explored = pick.kind == EXPLOIT and scores[pick.index] < top
        shown.add(pick.index)
        if pick.kind == PINNED:
            out.append("featured by the shop")
        elif pick.kind == PROMOTED:
            out.append(f"promoted: {_category(store, key)}")
        elif slate.policy == "random":
            out.append("picked at random (random policy)")
        elif pick.kind == EXPLORE:
            out.append("new arrival, exploring" if fresh else "something new, exploring")
        elif pick.kind == DIVERSE:
            out.append(f"{_category(store, key)}: a different category for variety")
        else:
            popular = popularity_band(int(slate.dynamic[pick.index])) > 0
            reason = _by_source(source, key, store, nearest, context, popular)
            out.append(f"{reason}, exploring" if explored else reason)
    return out


def _by_source(
    source: str,
    key: int,
    store: ItemStore,
    nearest: dict[int, int],
    context: list[str],
    popular: bool,
) -> str:
    if source == "similar" and key in nearest:
        title = store.catalog.titles[nearest[key]] or store.catalog.item_ids[nearest[key]]
        return f"similar to {title} you viewed"
    if source == "session":
        return f"matches your recent browsing in {_category(store, key)}"
    if source == "fresh":
        return "new arrival"
    if source == "context" and context:
        return f"popular with shoppers like you now ({', '.join(context)})"
    if not popular:  # nothing has interactions yet: the popular list is the newest items
        return f"new in {_category(store, key)}"
    return f"popular in {_category(store, key)} today"


def _nearest_seeds(slate: Slate, store: ItemStore, seeds: Sequence[int]) -> dict[int, int]:
    """For each exploit pick the similar generator proposed (the only picks whose reason
    names a seed): the seed item nearest to it."""
    similar = SOURCES.index("similar")
    picks = [
        int(slate.candidates.keys[p.index])
        for p in slate.picks
        if p.kind == EXPLOIT and slate.candidates.sources[p.index] == similar
    ]
    if not picks or not seeds:
        return {}
    seeds = list(dict.fromkeys(seeds))[:5]
    live, vectors = store.index.live_vectors([*seeds, *picks])
    row = {int(k): i for i, k in enumerate(live.tolist())}
    seed_rows = [row[s] for s in seeds if s in row]
    if not seed_rows:
        return {}
    out = {}
    for key in picks:
        if key in row:
            similarity = vectors[seed_rows] @ vectors[row[key]]
            out[key] = int(live[seed_rows[int(np.argmax(similarity))]])
    return out


def contributions(
    policy: Policy, slate: Slate, store: ItemStore, query: Query
) -> list[list[dict[str, object]]]:
    """Per pick, its top features and what each added to its score (module docstring)."""
    shown = [p.index for p in slate.picks]
    if isinstance(policy, VWPolicy):
        return _vw(policy, slate, store, shown)
    if isinstance(policy, Blend):
        parts = policy.part_scores(store, query, slate.dynamic)
        return [_top([(name, float(values[i])) for name, values in parts]) for i in shown]
    if isinstance(policy, Popular):
        bands = popularity_band(slate.dynamic).tolist()
        return [
            [{"feature": f"popularity band {bands[i]}", "contribution": bands[i]}] for i in shown
        ]
    if isinstance(policy, Content):
        return [
            [{"feature": "similarity to your session", "contribution": float(slate.scores[i])}]
            for i in shown
        ]
    return [[] for _ in shown]


def _top(pairs: list[tuple[str, float]]) -> list[dict[str, object]]:
    ranked = sorted(pairs, key=lambda p: -abs(p[1]))[:TOP_FEATURES]
    return [{"feature": name, "contribution": round(value, 6)} for name, value in ranked]


def _vw(
    policy: VWPolicy, slate: Slate, store: ItemStore, shown: list[int]
) -> list[list[dict[str, object]]]:
    scorer = policy.scorer
    keys = slate.candidates.keys
    actions = [
        action_features(store.catalog.features[int(keys[i])], int(slate.dynamic[i])) for i in shown
    ]
    full = scorer.score(slate.shared, actions)
    pairs: list[list[tuple[str, float]]] = [[] for _ in shown]
    # Item features: one predict per item, its variants each without one token.
    for n, action in enumerate(actions):
        tokens = action.split()
        features = [t for t, token in enumerate(tokens) if not token.startswith("|")]
        variants = [" ".join(tokens[:t] + tokens[t + 1 :]) for t in features]
        without = scorer.score(slate.shared, variants)
        namespace = ["i"] * len(tokens)  # each token's namespace: i until a "|d" marker
        for t, token in enumerate(tokens):
            namespace[t] = token[1:] if token.startswith("|") else namespace[t - 1] if t else "i"
        for t, score in zip(features, without.tolist(), strict=True):
            token = tokens[t]
            name = "this item" if token.startswith("k") and token[1:].isdigit() else token
            pairs[n].append((f"{namespace[t]}:{name}", float(full[n] - score)))
    # Shared features: one predict per feature, every shown item at once.
    for name, reduced in _without_each(slate.shared):
        without = scorer.score(reduced, actions)
        for n in range(len(shown)):
            pairs[n].append((name, float(full[n] - without[n])))
    return [_top(p) for p in pairs]


def _without_each(shared: SharedFeatures) -> list[tuple[str, SharedFeatures]]:
    out = []
    for i, category in enumerate(shared.user):
        reduced = dataclasses.replace(shared, user=shared.user[:i] + shared.user[i + 1 :])
        out.append((f"u:recent {category}", reduced))
    for i, token in enumerate(shared.profile):
        reduced = dataclasses.replace(shared, profile=shared.profile[:i] + shared.profile[i + 1 :])
        out.append((f"u:{token}", reduced))
    for name, value in shared.context.items():
        reduced = dataclasses.replace(
            shared, context={k: v for k, v in shared.context.items() if k != name}
        )
        out.append((f"c:{name}={value}", reduced))
    return out
