"""Retrieval quality and speed: content, collaborative (SVD and ALS), blended, and popular.

    python -m benchmarks.retrieval [--items 5000] [--users 4000] [--per-user 25]
                                   [--train-interactions 10000000] [--index-items 1000000]

A storefront with latent tastes: the simulator's click model (each shopper's tastes over
categories, each item's appeal) times a hidden style affinity that no content feature reveals
(every item has one of ``STYLES`` styles; every shopper likes a few). Each shopper's history is
``--per-user`` clicks drawn from their click probabilities. For 1,000 shoppers, the query is
their session vector (the sum of their last five clicked items' vectors, as serving builds it)
and the candidates are its 200 nearest items by exact search, for each kind of vector:

    recall@200   share of the shopper's 50 truly best items (by click probability) retrieved
    hit@10       whether a fresh click, drawn from the same probabilities, is in the top 10

Popular ranks by click counts in the log. Then: embedding training time for
``--train-interactions`` synthetic interactions, and HNSW query p99 on an index of
``--index-items`` blended vectors (k=200, ef=256). Figures go to stdout and
benchmarks/results/retrieval.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from slatebandit.retrieval import ContentEmbedder, ItemIndex, item_tokens, title_words
from slatebandit.retrieval.collab import INDEX_DIM, blend, train_factors
from slatebandit.simulate.storefront import Storefront

RESULTS = Path(__file__).parent / "results" / "retrieval.json"
STYLES = 24
TRUE_BEST = 50
CANDIDATES = 200


def world(items: int, users: int, seed: int):  # type: ignore[no-untyped-def]
    store = Storefront.generate(items, users, seed)
    rng = np.random.default_rng(seed + 1)
    style = rng.integers(STYLES, size=items)
    likes = rng.dirichlet(np.full(STYLES, 0.2), size=users)  # a few styles per shopper
    category = np.array([store.category_of[i.item_id] for i in store.items])
    appeal = np.array([store.appeal[i.item_id] for i in store.items])
    # p(click | shown at the top), per user and item: the simulator's model times the style.
    click = store.tastes[:, category] * appeal[None, :] * likes[:, style] * STYLES
    return store, click / click.sum(axis=1, keepdims=True)


def content_vectors(store: Storefront) -> np.ndarray:
    embedder = ContentEmbedder()
    return embedder.embed_many(
        [
            (item_tokens(i.category, i.brand, i.price, i.attributes), title_words(i.title))
            for i in store.items
        ]
    )


def evaluate(
    vectors: np.ndarray, history: np.ndarray, truth: np.ndarray, fresh: np.ndarray
) -> dict:  # type: ignore[type-arg]
    recalls, hits = [], []
    for user in range(len(history)):
        query = vectors[history[user, -5:]].sum(axis=0)
        scores = vectors @ query
        top = np.argpartition(-scores, CANDIDATES)[:CANDIDATES]
        top10 = top[np.argsort(-scores[top])][:10]
        recalls.append(len(np.intersect1d(top, truth[user])) / TRUE_BEST)
        hits.append(fresh[user] in top10)
    return {
        "recall@200": round(float(np.mean(recalls)), 3),
        "hit@10": round(float(np.mean(hits)), 3),
    }


def quality(items: int, users: int, per_user: int, seed: int) -> dict:  # type: ignore[type-arg]
    store, click = world(items, users, seed)
    rng = np.random.default_rng(seed + 2)
    history = np.array([rng.choice(items, size=per_user, p=click[u]) for u in range(users)])
    test = np.arange(min(1000, users))
    fresh = np.array([rng.choice(items, p=click[u]) for u in test])
    truth = np.argsort(-click[test], axis=1)[:, :TRUE_BEST]
    user_ids = np.repeat(np.arange(users), per_user)
    content = content_vectors(store)
    out: dict[str, object] = {"items": items, "users": users, "interactions": int(history.size)}
    counts = np.bincount(history.ravel(), minlength=items).astype(float)
    popular = np.argsort(-counts)[:CANDIDATES]
    out["popular"] = {
        "recall@200": round(
            float(np.mean([len(np.intersect1d(popular, t)) / TRUE_BEST for t in truth])), 3
        ),
        "hit@10": round(float(np.mean([f in popular[:10] for f in fresh])), 3),
    }
    out["content"] = evaluate(content, history[test], truth, fresh)
    for method in ("svd", "als"):
        started = time.perf_counter()
        factors = train_factors(
            user_ids, history.ravel(), np.ones(history.size), method=method, seed=seed
        )
        seconds = time.perf_counter() - started
        collab, counts_found = factors.lookup(np.arange(items))
        out[f"collaborative {method}"] = {
            **evaluate(collab, history[test], truth, fresh),
            "train_s": round(seconds, 2),
        }
        out[f"blended {method}"] = evaluate(
            blend(content, collab, counts_found), history[test], truth, fresh
        )
    return out


def training_time(interactions: int, seed: int) -> dict:  # type: ignore[type-arg]
    rng = np.random.default_rng(seed)
    items = max(1000, interactions // 100)
    users = max(1000, interactions // 50)
    user_ids = rng.integers(users, size=interactions)
    item_ids = (rng.zipf(1.3, size=interactions) - 1) % items  # long-tailed popularity
    out = {"interactions": interactions, "users": users, "items": items}
    for method in ("svd", "als"):
        started = time.perf_counter()
        train_factors(user_ids, item_ids, np.ones(interactions), method=method, seed=seed)
        out[f"{method}_s"] = round(time.perf_counter() - started, 1)
        print(f"training on {interactions:,} interactions ({method}): {out[f'{method}_s']} s")
    return out


def query_p99(n: int, seed: int) -> dict:  # type: ignore[type-arg]
    rng = np.random.default_rng(seed)
    index = ItemIndex(INDEX_DIM, capacity=n + 1024, ef=256)
    started = time.perf_counter()
    for start in tqdm(range(0, n, 50_000), desc="index", unit="50k items"):
        vectors = rng.standard_normal((min(50_000, n - start), INDEX_DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index.upsert(np.arange(start, start + len(vectors)), vectors, threads=2)
    build = time.perf_counter() - started
    queries = rng.standard_normal((2000, INDEX_DIM)).astype(np.float32)
    times = []
    for q in queries:
        started = time.perf_counter()
        index.query(q, CANDIDATES)
        times.append(time.perf_counter() - started)
    return {
        "items": n,
        "build_s": round(build, 1),
        "query_p50_ms": round(float(np.percentile(times, 50)) * 1000, 2),
        "query_p99_ms": round(float(np.percentile(times, 99)) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--per-user", type=int, default=25)
    parser.add_argument("--train-interactions", type=int, default=0, help="0: skip")
    parser.add_argument("--index-items", type=int, default=0, help="0: skip")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    figures: dict[str, object] = {
        "quality": quality(args.items, args.users, args.per_user, args.seed)
    }
    print(json.dumps(figures["quality"], indent=2))
    if args.train_interactions:
        figures["training"] = training_time(args.train_interactions, args.seed)
    if args.index_items:
        figures["query"] = query_p99(args.index_items, args.seed)
        print(json.dumps(figures["query"], indent=2))
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
