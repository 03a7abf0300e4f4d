"""Explanations: a reason on every slot, and exact ablation contributions with ?explain=true."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from slatebandit.bandit import Exploration, SharedFeatures, VWScorer, action_features, slot_example
from slatebandit.logging import open_engine
from slatebandit.policies import Query, VWPolicy
from slatebandit.policies.explain import contributions, reasons
from slatebandit.retrieval import SOURCES, ItemStore, generate
from slatebandit.retrieval.demo import demo_items
from tests.conftest import make_settings, seed_catalog

ARGS = "--cb_adf --cb_type mtr -q ui -q ci -b 18"


def test_every_item_carries_a_reason_that_names_what_it_is_similar_to(tmp_path: Path) -> None:
    from slatebandit.server import create_app

    settings = make_settings(tmp_path, learner="off")
    catalog = list(demo_items(400, seed=9))
    seed_catalog(settings.database_url, catalog)
    viewed = catalog[17]
    with TestClient(create_app(settings)) as client:
        event = {"user_id": "ann", "item_id": viewed.item_id, "type": "view"}
        assert client.post("/v1/events", json=event).status_code == 202
        body = client.post("/v1/slates", json={"user_id": "ann", "k": 10}).json()
        items = body["items"]
        assert all(isinstance(i["reason"], str) and i["reason"] for i in items)
        for item in items:
            if item["kind"] == "explore":
                assert "exploring" in item["reason"]
            elif item["kind"] == "diverse":
                assert item["reason"].endswith("a different category for variety")
            elif item["source"] == "similar":
                assert item["reason"].startswith(f"similar to {viewed.title} you viewed")
            elif item["source"] == "popular":  # "new in X" while nothing has interactions
                assert item["reason"].startswith(("popular in ", "new in "))
        assert any(i["source"] == "similar" and i["kind"] == "exploit" for i in items)
        assert all("explanation" not in i for i in items)

        detailed = client.post("/v1/slates?explain=true", json={"user_id": "ann", "k": 5}).json()
        for item in detailed["items"]:
            features = item["explanation"]["features"]
            assert 0 < len(features) <= 5
            assert all(isinstance(f["contribution"], float) for f in features)
        bad = client.post("/v1/slates?explain=maybe", json={"user_id": "ann", "k": 5})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "explain"


def test_vw_contributions_are_exact_ablations(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    seed_catalog(settings.database_url, list(demo_items(200, seed=2)))
    engine = open_engine(settings.database_url)
    store = ItemStore.open(engine, None)
    shared = SharedFeatures.build({"device": "mobile"}, ["shoes"], at=0, profile=["tb=acme"])
    candidates = generate(store, None, [1, 2], set(), 100)
    scorer = VWScorer(ARGS)
    codes = store.catalog.dynamic_codes(candidates.keys, time.time())
    rng = np.random.default_rng(0)
    for _ in range(300):
        j = int(rng.integers(len(candidates)))
        key = int(candidates.keys[j])
        features = action_features(store.catalog.features[key], int(codes[j]))
        scorer.learn(
            slot_example(shared, 0, features, float("c=" in features and key % 3 == 0), 0.3)
        )
    policy = VWPolicy(scorer, Exploration("epsilon", 0.1))
    query = Query(shared, candidates)
    slate = policy.slate(store, query, 4, np.random.default_rng(1))
    explained = contributions(policy, slate, store, query)
    assert len(explained) == 4
    checked = 0
    for pick, features in zip(slate.picks, explained, strict=True):
        assert 0 < len(features) <= 5
        magnitudes = [abs(f["contribution"]) for f in features]
        assert magnitudes == sorted(magnitudes, reverse=True)
        action = action_features(
            store.catalog.features[int(candidates.keys[pick.index])], int(slate.dynamic[pick.index])
        )
        full = scorer.score(shared, [action])[0]
        for feature in features:
            name = str(feature["feature"])
            if name == "c:device=mobile":
                without = scorer.score(
                    SharedFeatures({"hour": 0}, shared.user, shared.profile), [action]
                )[0]
            elif name.startswith(("i:", "d:")) and name != "i:this item":
                token = name[2:]
                without = scorer.score(shared, [" ".join(t for t in action.split() if t != token)])[
                    0
                ]
            else:
                continue
            assert feature["contribution"] == pytest.approx(full - without, abs=1e-6)
            checked += 1
    assert checked >= 4
    reasons_given = reasons(slate, store, [1, 2])
    assert len(reasons_given) == 4 and all(reasons_given)
    engine.dispose()


def test_popular_picks_say_new_until_something_has_interactions(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    seed_catalog(settings.database_url, list(demo_items(200, seed=2)))
    engine = open_engine(settings.database_url)
    store = ItemStore.open(engine, None)
    shared = SharedFeatures.build({}, at=0)
    policy = VWPolicy(VWScorer(ARGS), Exploration("epsilon", 0.01))

    def popular_reasons() -> list[tuple[str, int]]:
        """(reason, popularity band) of the exploit picks the popular generator proposed."""
        candidates = generate(store, None, [], set(), 60)
        slate = policy.slate(store, Query(shared, candidates), 40, np.random.default_rng(0))
        said = reasons(slate, store, [])
        popular = [
            (r, int(slate.dynamic[p.index]) >> 4)
            for r, p in zip(said, slate.picks, strict=True)
            if p.kind == "exploit" and candidates.sources[p.index] == SOURCES.index("popular")
        ]
        assert popular
        return popular

    store.catalog.refresh_popular()  # nothing has interactions: the newest items, tied
    assert all(r.startswith("new in ") and band == 0 for r, band in popular_reasons())
    for key in store.catalog.popular[:50].tolist():
        store.catalog.bump_popularity(int(key), 10.0)
    store.catalog.refresh_popular()
    after = popular_reasons()
    assert any(band > 0 for _, band in after)
    for reason, band in after:
        assert reason.startswith("popular in " if band > 0 else "new in ")
    engine.dispose()
