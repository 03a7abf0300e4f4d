"""Collaborative item vectors: training, blending with content, and the swap beside serving."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from slatebandit.cli import main
from slatebandit.logging import open_engine
from slatebandit.retrieval import ItemStore
from slatebandit.retrieval.collab import (
    BLEND_INTERACTIONS,
    COLLAB_DIM,
    INDEX_DIM,
    ItemFactors,
    blend,
    content_of,
    train_factors,
)
from slatebandit.retrieval.demo import demo_items
from slatebandit.retrieval.embedding_job import follow_factors, latest_factors
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog


def _tastes(seed: int = 0, users: int = 600, items: int = 120, groups: int = 4):  # type: ignore[no-untyped-def]
    """Users who each interact only with items of their own taste group."""
    rng = np.random.default_rng(seed)
    group_of = np.arange(items) % groups
    rows_u, rows_i = [], []
    for user in range(users):
        mine = np.flatnonzero(group_of == user % groups)
        for item in rng.choice(mine, size=8, replace=False):
            rows_u.append(f"u{user}")
            rows_i.append(int(item))
    return np.array(rows_u, dtype=object), np.array(rows_i), np.ones(len(rows_i)), group_of


@pytest.mark.parametrize("method", ["svd", "als"])
def test_items_bought_together_end_up_neighbours(method: str) -> None:
    users, items, weights, group_of = _tastes()
    factors = train_factors(users, items, weights, method=method, seed=1)
    assert factors.vectors.shape == (120, COLLAB_DIM)
    assert np.allclose(np.linalg.norm(factors.vectors, axis=1), 1.0, atol=1e-5)
    similarity = factors.vectors @ factors.vectors.T
    np.fill_diagonal(similarity, -np.inf)
    top = np.argsort(-similarity, axis=1)[:, :10]
    same = (group_of[factors.keys[top]] == group_of[factors.keys][:, None]).mean()
    assert same > 0.9, same  # chance is 0.25
    again = train_factors(users, items, weights, method=method, seed=1)
    assert np.allclose(again.vectors, factors.vectors, atol=1e-5)  # seeded


def test_blend_keeps_the_content_part_and_new_items_are_pure_content() -> None:
    rng = np.random.default_rng(2)
    content = rng.standard_normal((5, INDEX_DIM - COLLAB_DIM)).astype(np.float32)
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    collab = rng.standard_normal((5, COLLAB_DIM)).astype(np.float32)
    collab /= np.linalg.norm(collab, axis=1, keepdims=True)
    counts = np.array([0.0, 1.0, BLEND_INTERACTIONS, 200.0, 5000.0])
    mixed = blend(content, collab, counts)
    assert np.allclose(np.linalg.norm(mixed, axis=1), 1.0, atol=1e-5)
    assert (
        np.allclose(mixed[0, : content.shape[1]], content[0])
        and not mixed[0, content.shape[1] :].any()
    )
    assert np.allclose(content_of(mixed, counts), content, atol=1e-4)
    weight = np.linalg.norm(mixed[:, content.shape[1] :], axis=1) ** 2
    assert np.all(np.diff(weight) > 0) and weight[2] == pytest.approx(0.5)


def _store(tmp_path: Path, n: int = 400):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path)
    seed_catalog(settings.database_url, list(demo_items(n, seed=9)))
    engine = open_engine(settings.database_url)
    return engine, ItemStore.open(engine, None)


def test_a_rebuild_blends_new_vectors_and_replays_changes_made_meanwhile(tmp_path: Path) -> None:
    engine, store = _store(tmp_path)
    keys = np.flatnonzero(store.catalog.available)
    before = store.index.vectors(keys)
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((50, COLLAB_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    factors = ItemFactors(7, keys[:50].copy(), vectors, np.full(50, BLEND_INTERACTIONS))

    new = store.build_with(factors)
    # Catalog changes land on the serving index while the new one is being built.
    from slatebandit.items import Item
    from slatebandit.logging import delete_item, upsert_items

    with engine.begin() as conn:
        upsert_items(
            conn, [Item(item_id="late-arrival", title="Late linen shirt", category="men/shirts")]
        )
        delete_item(conn, store.catalog.item_ids[int(keys[60])])
    store._sync(engine)
    asyncio.run(store.swap_in(new, factors))

    assert store.index is new and store.factors.version == 7 == store.index.factors_version
    late = store.catalog.key_of["late-arrival"]
    assert store.index.contains(late) and not store.index.contains(int(keys[60]))
    after = store.index.vectors(keys[:50])
    assert np.allclose(after[:, :-COLLAB_DIM], before[:50, :-COLLAB_DIM] * np.sqrt(0.5), atol=1e-4)
    assert np.allclose(after[:, -COLLAB_DIM:], vectors * np.sqrt(0.5), atol=1e-4)
    untouched = store.index.vectors(keys[100:150])
    assert np.allclose(untouched, before[100:150], atol=1e-5)  # no interactions: content only
    engine.dispose()


def test_slates_keep_coming_while_the_index_is_rebuilt(tmp_path: Path) -> None:
    """Slates requested back to back before, during and after a rebuild of 6,000 items: none
    fails, and the rebuild swaps in mid-stream."""
    settings = make_settings(tmp_path, learner="off", embedding_interval=0)
    items = list(demo_items(6000, seed=10))
    seed_catalog(settings.database_url, items)
    engine = open_engine(settings.database_url)
    keys = np.arange(1, 6001)
    rng = np.random.default_rng(4)
    from slatebandit.logging.embeddings import save_factors

    vectors = rng.standard_normal((6000, COLLAB_DIM)).astype(np.float32)
    with TestClient(create_app(settings)) as client:
        services = client.app_state["recommender"]
        save_factors(
            engine,
            method="svd",
            interactions=1,
            seconds=0.0,
            keys=keys,
            vectors=vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
            counts=np.full(6000, 5.0),
        )
        latencies: list[tuple[float, int]] = []

        def slate() -> None:
            started = time.perf_counter()
            answer = client.post("/v1/slates", json={"user_id": f"u{len(latencies)}", "k": 10})
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["items"]) == 10
            latencies.append((time.perf_counter() - started, services.store.factors.version))

        for _ in range(150):  # before: the baseline
            slate()
        baseline = [t for t, _ in latencies]
        latencies.clear()
        done = client.portal.start_task_soon(follow_factors, engine, services.store)
        while not done.done() or len(latencies) < 50:
            slate()
        assert done.result() is True
    engine.dispose()
    versions = [v for _, v in latencies]
    assert versions[0] == 0 and versions[-1] == 1  # served before and after the swap
    during = [t for t, v in latencies if v == 0]
    p99_before, p99_during = np.percentile(baseline, 99), np.percentile(during, 99)
    print(
        f"slates during the rebuild: {len(during)}; "
        f"p99 {p99_before * 1000:.1f} ms before, {p99_during * 1000:.1f} ms during"
    )


def test_train_embeddings_from_the_event_log_and_serve_them(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, learner="off", embedding_interval=0)
    items = list(demo_items(200, seed=11))
    seed_catalog(settings.database_url, items)
    url = settings.database_url
    assert main(["train-embeddings", "--db", url]) == 1  # no interactions yet
    with TestClient(create_app(settings)) as client:
        for user in range(80):
            for item in items[(user % 4) * 10 : (user % 4) * 10 + 6]:
                event = {"user_id": f"u{user}", "item_id": item.item_id, "type": "click"}
                assert client.post("/v1/events", json=event).status_code == 202
    assert main(["train-embeddings", "--db", url, "--method", "svd"]) == 0
    engine = open_engine(url)
    factors = latest_factors(engine)
    engine.dispose()
    assert factors.version == 1 and len(factors.keys) == 24  # 4 groups x 6 items
    with TestClient(create_app(settings)) as client:  # a new process starts on version 1
        assert client.app_state["recommender"].store.index.factors_version == 1


def test_the_embedding_job_writes_batch_features_that_reach_the_scorer(tmp_path: Path) -> None:
    from sqlalchemy import select

    from slatebandit.logging import DecisionPayload
    from slatebandit.logging.schema import decisions
    from slatebandit.logging.users import read_user_profile

    settings = make_settings(tmp_path, learner="off", embedding_interval=0)
    items = list(demo_items(100, seed=12))
    seed_catalog(settings.database_url, items)
    shoes = [i for i in items if i.price is not None][:3]
    with TestClient(create_app(settings)) as client:
        for item in shoes:
            for kind in ("click", "purchase"):
                event = {"user_id": "cat", "item_id": item.item_id, "type": kind}
                assert client.post("/v1/events", json=event).status_code == 202
    assert main(["train-embeddings", "--db", settings.database_url]) == 0
    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        profile = read_user_profile(conn, "cat")
    assert f"bc={shoes[0].category}" in profile and "np=2" in profile  # 3 purchases
    assert any(token.startswith("pb=") for token in profile)
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/slates", json={"user_id": "cat", "k": 3}).json()
    with engine.connect() as conn:
        payload = conn.execute(
            select(decisions.c.payload).where(decisions.c.event_id == answer["event_id"])
        ).scalar_one()
    engine.dispose()
    assert set(profile) <= set(DecisionPayload.decode(payload).context["p"])


def test_a_rebuild_skips_items_that_leave_the_index_while_it_runs(tmp_path: Path) -> None:
    engine, store = _store(tmp_path, n=300)
    keys = np.flatnonzero(store.catalog.available)
    store.index.delete(keys[:5])  # gone from the index, as by a delete racing the build
    new = store.build_with(ItemFactors.empty())
    assert not any(new.contains(int(k)) for k in keys[:5])
    assert all(new.contains(int(k)) for k in keys[5:])
    engine.dispose()
