"""Every policy behind one interface: one contract test run against each (real VW, hnswlib).

The contract: each slot's pmf sums to 1 over the candidates the slot may pick from and is
positive on every one of them; the logged propensity is that pmf at the pick and matches how
often the pick happens; the same seed gives the same slate; ``dump``/``load_policy``
round-trips to the same slates.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from slatebandit.bandit import (
    EXPLORE,
    Exploration,
    SharedFeatures,
    VWScorer,
    action_features,
    slot_example,
    slot_pmf,
)
from slatebandit.config import Settings
from slatebandit.errors import InvalidInput, NotFound
from slatebandit.logging import models, open_engine
from slatebandit.policies import PolicySet, Query, VWPolicy, load_policy, parse_spec
from slatebandit.policies.base import min_max
from slatebandit.retrieval import FRESH, ItemStore, generate
from slatebandit.retrieval.demo import demo_items
from tests.conftest import make_settings, seed_catalog

SPECS = ["vw", "popular", "random", "content", "blend:vw=0.5,popular=0.3,content=0.2"]
AT = 1_790_000_000.0  # a fixed clock for the hour feature


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A 300-item store, a trained VW champion, some popularity, a shopper's session."""
    tmp_path = tmp_path_factory.mktemp("policies")
    settings = make_settings(tmp_path, explore_slots=(3,), diverse_slots=(1,), epsilon=0.2)
    seed_catalog(settings.database_url, list(demo_items(300, seed=11)))
    engine = open_engine(settings.database_url)
    store = ItemStore.open(engine, None)
    catalog = store.catalog
    rng = np.random.default_rng(0)
    live = np.flatnonzero(catalog.available)
    for key in rng.choice(live, 60, replace=False):
        catalog.bump_popularity(int(key), float(rng.integers(1, 40)), now=AT)
    session = [int(k) for k in live[:3]]
    candidates = generate(store, None, session, set(), 120)
    shared = SharedFeatures.build({"device": "mobile", "page": "home"}, ["shoes"], at=AT)
    query = Query(shared, candidates)

    scorer = VWScorer(settings.vw_args)
    codes = catalog.dynamic_codes(candidates.keys, AT)
    for i in range(400):  # a preference for even keys, so VW's scores differ
        j = int(rng.integers(len(candidates)))
        key = int(candidates.keys[j])
        features = action_features(catalog.features[key], int(codes[j]))
        scorer.learn(slot_example(shared, i % 5, features, float(key % 2 == 0), 0.2))
    with engine.begin() as conn:
        version = models.save_version(
            conn,
            parent=None,
            vw_args=scorer.args,
            feature_spec=3,
            examples=400,
            learned_through=0,
            model=scorer.to_bytes(),
        )
    champion = VWPolicy(
        VWScorer(scorer.args, version=version, model_bytes=scorer.to_bytes()),
        Exploration("epsilon", 0.2),
        settings.explore_slots,
        settings.diverse_slots,
    )
    policies = PolicySet(settings, engine, champion)
    yield settings, store, query, policies, version
    engine.dispose()


def _pmfs(slate, store):  # type: ignore[no-untyped-def]
    """Each slot's (pool, pmf) rebuilt from what the slate logged, in slot order."""
    catalog, candidates = store.catalog, slate.candidates
    categories = catalog.category[candidates.keys]
    fresh = (candidates.flags & FRESH) != 0
    allowed = np.ones(len(candidates), dtype=bool)
    novel = np.ones(len(candidates), dtype=bool)
    out = []
    for pick in slate.picks:
        indices, pmf = slot_pmf(pick.kind, allowed, slate.scores, fresh, novel, slate.exploration)
        out.append((allowed.copy(), indices, pmf))
        allowed[pick.index] = False
        novel &= categories != categories[pick.index]
    return out


@pytest.mark.parametrize("spec", SPECS)
def test_every_slot_is_a_distribution_over_its_allowed_candidates(world, spec) -> None:  # type: ignore[no-untyped-def]
    settings, store, query, policies, _ = world
    policy = policies.get(spec)
    assert policy.name == spec
    slate = policy.slate(store, query, 8, np.random.default_rng(1))
    assert len(slate.picks) == 8 and len({p.index for p in slate.picks}) == 8
    for pick, (allowed, indices, pmf) in zip(slate.picks, _pmfs(slate, store), strict=True):
        assert pmf.sum() == pytest.approx(1.0, abs=1e-9)
        assert np.all(pmf > 0)
        assert set(indices.tolist()) <= set(np.flatnonzero(allowed).tolist())
        if pick.kind != EXPLORE and not (pick.kind == "diverse"):
            assert set(indices.tolist()) == set(np.flatnonzero(allowed).tolist())
        assert pick.propensity == pytest.approx(pmf[indices.tolist().index(pick.index)])


@pytest.mark.parametrize("spec", SPECS)
def test_logged_propensities_match_how_often_each_item_is_picked(world, spec) -> None:  # type: ignore[no-untyped-def]
    """Slot 0 sampled 3,000 times: a chi-square test of the counts against the propensities
    the policy logged (seeded, so the verdict is fixed)."""
    settings, store, query, policies, _ = world
    policy = policies.get(spec)
    rng = np.random.default_rng(7)
    counts: Counter[int] = Counter()
    logged: dict[int, float] = {}
    n = 3000
    for _ in range(n):
        pick = policy.slate(store, query, 1, rng).picks[0]
        counts[pick.index] += 1
        logged[pick.index] = pick.propensity
    _, indices, pmf = _pmfs(policy.slate(store, query, 1, rng), store)[0]
    expected = dict(zip(indices.tolist(), pmf.tolist(), strict=True))
    for index, p in logged.items():
        assert p == pytest.approx(expected[index])
    big = [i for i in expected if expected[i] * n >= 5]  # the chi-square needs 5 per cell
    observed = [counts[i] for i in big] + [n - sum(counts[i] for i in big)]
    wanted = [expected[i] * n for i in big] + [n - sum(expected[i] * n for i in big)]
    if wanted[-1] < 1e-9:
        observed, wanted = observed[:-1], wanted[:-1]
    assert stats.chisquare(observed, wanted).pvalue > 0.001


@pytest.mark.parametrize("spec", SPECS)
def test_the_same_seed_gives_the_same_slate(world, spec) -> None:  # type: ignore[no-untyped-def]
    _, store, query, policies, _ = world
    policy = policies.get(spec)
    first = policy.slate(store, query, 10, np.random.default_rng(42))
    second = policy.slate(store, query, 10, np.random.default_rng(42))
    assert first.picks == second.picks
    assert np.array_equal(first.scores, second.scores)


@pytest.mark.parametrize("spec", SPECS)
def test_dump_and_load_round_trip_to_the_same_slates(world, spec) -> None:  # type: ignore[no-untyped-def]
    _, store, query, policies, _ = world
    policy = policies.get(spec)
    loaded = load_policy(policy.dump())
    assert type(loaded) is type(policy) and loaded.name == policy.name
    assert loaded.exploration == policy.exploration
    assert loaded.model_version == policy.model_version
    for seed in range(5):
        a = policy.slate(store, query, 10, np.random.default_rng(seed))
        b = loaded.slate(store, query, 10, np.random.default_rng(seed))
        assert a.picks == b.picks and np.allclose(a.scores, b.scores)


def test_scores_say_what_each_policy_is(world) -> None:  # type: ignore[no-untyped-def]
    _, store, query, policies, _ = world
    codes = store.catalog.dynamic_codes(query.candidates.keys, AT)
    popular = policies.get("popular").scores(store, query, codes)
    assert np.array_equal(popular, (codes >> 4).astype(float)) and popular.max() > 0
    content = policies.get("content").scores(store, query, codes)
    assert content.max() <= 1 + 1e-6 and content.std() > 0  # cosines to the session
    assert not np.any(policies.get("random").scores(store, query, codes))
    blend = policies.get("blend:vw=0.5,popular=0.3,content=0.2").scores(store, query, codes)
    vw = policies.get("vw").scores(store, query, codes)
    expected = 0.5 * min_max(vw) + 0.3 * min_max(popular) + 0.2 * min_max(content)
    assert np.allclose(blend, expected)


def test_random_is_uniform_in_every_slot_whatever_the_settings(world) -> None:  # type: ignore[no-untyped-def]
    _, store, query, policies, _ = world
    slate = policies.get("random").slate(store, query, 6, np.random.default_rng(3))
    n = len(query.candidates)
    assert [p.propensity for p in slate.picks] == pytest.approx([1 / (n - j) for j in range(6)])


def test_pinned_versions_load_from_the_registry(world) -> None:  # type: ignore[no-untyped-def]
    _, store, query, policies, version = world
    pinned = policies.get(f"vw@{version}")
    assert pinned.name == f"vw@{version}" and pinned.model_version == version
    assert policies.get(f"vw@{version}") is pinned  # built once
    with pytest.raises(NotFound, match="no model version 999"):
        policies.get("vw@999")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "expected a policy"),
        ("greedy", "unknown policy 'greedy'"),
        ("vw@x", "unknown policy 'vw@x'"),
        ("blend:vw=0.5", "at least two"),
        ("blend:vw=0.5,vw=0.5", "appears twice"),
        ("blend:vw=0,popular=1", r"weight in \(0, 1000\]"),
        ("blend:vw=nan,popular=1", r"weight in \(0, 1000\]"),
        ("blend:vw=1,blend:popular=1", "unknown policy"),
        ("blend:" + ",".join(["popular=1"] * 20), "at most 64"),
    ],
)
def test_bad_specs_are_refused_by_name(spec: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match) as raised:
        parse_spec(spec, field="arms[0].policy")
    assert raised.value.field == "arms[0].policy"


def test_the_default_policy_must_be_a_known_spec(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from slatebandit.errors import ConfigError
    from slatebandit.server import create_app

    settings: Settings = make_settings(tmp_path, policy="greedy")
    with pytest.raises(ConfigError, match="SLATEBANDIT_POLICY"):
        with TestClient(create_app(settings)):
            pass
