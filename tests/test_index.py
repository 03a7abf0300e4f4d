"""HNSW retrieval against a brute-force oracle, incremental changes, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slatebandit.retrieval import ContentEmbedder, ItemIndex, item_tokens, title_words
from slatebandit.retrieval import index as index_module
from slatebandit.retrieval.demo import demo_items


def _recall(
    index: ItemIndex, data: np.ndarray, keys: np.ndarray, queries: np.ndarray, k: int = 10
) -> float:
    labels, _ = index.query(queries, k)
    sims = queries @ data.T
    hits = 0
    for row, found in enumerate(labels):
        # Tie-aware oracle: any item at least as close as the true k-th neighbour counts.
        kth = np.partition(-sims[row], k - 1)[k - 1]
        good = set(keys[-sims[row] <= kth + 1e-5].tolist())
        hits += len(good & set(found.tolist()))
    return hits / (len(queries) * k)


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    data = rng.standard_normal((n, dim)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def test_recall_at_10_random_vectors_and_after_save_load(tmp_path: Path) -> None:
    # Unstructured random vectors are the hard case: they need ef=256 (catalog embeddings reach
    # recall 1.0 at the serving default, below).
    rng = np.random.default_rng(0)
    data = _unit(rng, 20_000, 64)
    keys = np.arange(1, len(data) + 1)
    index = ItemIndex(64, ef=256)
    index.upsert(keys, data, threads=2)
    queries = _unit(rng, 300, 64)
    recall = _recall(index, data, keys, queries)
    assert recall >= 0.95

    index.rev = 42
    index.save(tmp_path / "items.json")
    loaded = ItemIndex.load(tmp_path / "items.json")
    assert loaded.rev == 42 and len(loaded) == len(data)
    assert _recall(loaded, data, keys, queries) == recall
    np.testing.assert_array_equal(loaded.query(queries, 10)[0], index.query(queries, 10)[0])


def test_recall_at_10_on_catalog_embeddings() -> None:
    embedder = ContentEmbedder()
    items = list(demo_items(20_000, seed=11))
    data = embedder.embed_many(
        [
            (item_tokens(i.category, i.brand, i.price, i.attributes), title_words(i.title))
            for i in items
        ]
    )
    keys = np.arange(1, len(items) + 1)
    index = ItemIndex(data.shape[1])  # the serving default ef
    index.upsert(keys, data)
    rng = np.random.default_rng(5)
    queries = data[rng.choice(len(data), 300, replace=False)]
    assert _recall(index, data, keys, queries) >= 0.95


def test_embeddings_are_deterministic_and_group_similar_items() -> None:
    a = ContentEmbedder().embed(
        item_tokens("men/shoes", "Acme", 50, {"color": "red"}), title_words("red shoe")
    )
    b = ContentEmbedder().embed(
        item_tokens("men/shoes", "Acme", 50, {"color": "red"}), title_words("red shoe")
    )
    sibling = ContentEmbedder().embed(item_tokens("men/shoes", "Other", 55, {"color": "blue"}), [])
    stranger = ContentEmbedder().embed(
        item_tokens("home/kitchen", "Pots", 9, {"color": "grey"}), []
    )
    np.testing.assert_array_equal(a, b)
    assert float(a @ sibling) > float(a @ stranger)


def test_update_delete_and_readd() -> None:
    rng = np.random.default_rng(1)
    data = _unit(rng, 500, 16)
    index = ItemIndex(16)
    index.upsert(np.arange(500), data)
    target = data[7]
    assert index.query(target, 1)[0][0, 0] == 7

    index.delete(np.array([7]))
    assert 7 not in index.query(target, 20)[0][0]
    assert len(index) == 499 and not index.contains(7)

    moved = _unit(rng, 1, 16)[0]
    index.upsert(np.array([7]), moved[None, :])  # back, at a new place
    assert index.contains(7) and len(index) == 500
    assert index.query(moved, 1)[0][0, 0] == 7

    index.upsert(np.array([900]), target[None, :])  # beyond capacity: grows
    assert index.query(target, 1)[0][0, 0] == 900


def test_neighbours_of_answers_as_query_does_and_forgets_on_every_change(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    data = _unit(rng, 500, 16)
    index = ItemIndex(16)
    index.upsert(np.arange(500), data)

    def asked_now(keys: list[int]) -> np.ndarray:
        live = [key for key in keys if index.contains(key)]
        return index.query(index.vectors(live), 21)[0]

    seeds = [3, 7, 11]
    first = index.neighbours_of(seeds, 21)
    assert first.shape == (3, 21) and list(first[:, 0]) == seeds  # each is its own nearest
    np.testing.assert_array_equal(first, asked_now(seeds))
    np.testing.assert_array_equal(index.neighbours_of([11, 3], 21), first[[2, 0]])  # kept

    twin = data[3] + 1e-3 * _unit(rng, 1, 16)[0]  # a new item right beside seed 3
    index.upsert(np.array([600]), (twin / np.linalg.norm(twin))[None, :])
    after_add = index.neighbours_of(seeds, 21)
    assert 600 in after_add[0]
    np.testing.assert_array_equal(after_add, asked_now(seeds))

    index.delete(np.array([600, 7]))  # a neighbour and a seed go
    after_delete = index.neighbours_of(seeds, 21)
    assert after_delete.shape == (2, 21) and 600 not in after_delete
    np.testing.assert_array_equal(after_delete, asked_now(seeds))

    index.save(tmp_path / "items.json")  # a loaded index starts with nothing kept
    loaded = ItemIndex.load(tmp_path / "items.json")
    np.testing.assert_array_equal(loaded.neighbours_of(seeds, 21), after_delete)
    assert index.neighbours_of([7], 21).shape == (0, 0)


def test_nearest_answers_as_query_does_and_forgets_on_every_change() -> None:
    rng = np.random.default_rng(3)
    data = _unit(rng, 500, 16)
    index = ItemIndex(16)
    index.upsert(np.arange(500), data)
    session = _unit(rng, 1, 16)[0]

    first = index.nearest(session, 100)
    np.testing.assert_array_equal(first, index.query(session, 100)[0][0])
    assert index.nearest(session.copy(), 100) is first  # kept, by the vector's bytes
    assert len(index.nearest(session, 10)) == 10  # another k: asked afresh

    index.upsert(np.array([600]), session[None, :])  # an item exactly where the shopper is
    after_add = index.nearest(session, 100)
    assert after_add[0] == 600
    np.testing.assert_array_equal(after_add, index.query(session, 100)[0][0])

    index.delete(np.array([600, int(first[0])]))
    after_delete = index.nearest(session, 100)
    assert 600 not in after_delete and first[0] not in after_delete
    np.testing.assert_array_equal(after_delete, index.query(session, 100)[0][0])


def test_a_full_neighbour_cache_drops_its_oldest_rows_and_keeps_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(index_module, "SIMILAR_ROWS", 4)
    monkeypatch.setattr(index_module, "NEAREST_ROWS", 2)
    rng = np.random.default_rng(4)
    index = ItemIndex(16)  # its caches take their limits when made
    index.upsert(np.arange(300), _unit(rng, 300, 16))

    first = index.neighbours_of([1, 2, 3], 21)
    kept = {key: index._similar[key, 21] for key in (1, 2, 3)}
    later = index.neighbours_of([4, 5], 21)  # two more past four: the oldest one goes
    assert list(index._similar) == [(2, 21), (3, 21), (4, 21), (5, 21)]
    assert index._similar[2, 21] is kept[2] and index._similar[3, 21] is kept[3]
    np.testing.assert_array_equal(index.neighbours_of([1, 5], 21), [first[0], later[1]])

    sessions = _unit(rng, 3, 16)
    answers = [index.nearest(vector, 50) for vector in sessions]
    assert len(index._nearest) == 2
    assert index.nearest(sessions[2], 50) is answers[2]  # the newest stays
    np.testing.assert_array_equal(index.nearest(sessions[0], 50), answers[0])  # asked again
