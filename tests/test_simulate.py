"""The storefront simulator, and the proof that the loop learns (real VW, SQLite, HTTP app)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from slatebandit.cli import main
from slatebandit.logging import open_engine
from slatebandit.policies.learner import Learner
from slatebandit.server import create_app
from slatebandit.simulate import Simulation, Storefront
from tests.conftest import make_settings

SEED = 3


def _curve(tmp_path, policy: str) -> list[float]:  # type: ignore[no-untyped-def]
    # Deterministic: seeded sampler and shoppers, the simulated clock as the hour, the popular
    # ranking computed once, and learning run between windows instead of on a timer.
    settings = make_settings(
        tmp_path / policy,
        seed=SEED,
        learner="off",
        reward_wait=0,
        api_keys="admin:a",
        popular_refresh_seconds=1e9,
    )
    admin = {"x-api-key": "a"}
    storefront = Storefront.generate(300, 200, seed=SEED)
    with TestClient(create_app(settings)) as client:
        sim = Simulation(client, storefront, policy, k=5, seed=SEED, headers=admin)
        sim.upload_catalog()
        engine = open_engine(settings.database_url)
        learner = Learner(engine, settings, holder="test")
        for _ in range(8):
            sim.run_window(300)
            if policy == "vw":
                assert sim.learn(learner) is not None
        engine.dispose()
    return [w.ctr for w in sim.windows]


@pytest.mark.slow
def test_the_learned_policy_beats_its_start_and_the_popular_baseline(tmp_path) -> None:  # type: ignore[no-untyped-def]
    learned = _curve(tmp_path, "vw")
    popular = _curve(tmp_path, "popular")
    assert learned[-1] >= 1.2 * learned[0]
    assert learned[-1] >= 1.2 * popular[-1]


def test_click_model_prefers_taste_and_top_slots() -> None:
    store = Storefront.generate(50, 10, seed=1)
    user = 0
    liked = int(store.tastes[user].argmax())
    disliked = int(store.tastes[user].argmin())
    a = next(i.item_id for i in store.items if store.category_of[i.item_id] == liked)
    b = next(i.item_id for i in store.items if store.category_of[i.item_id] == disliked)
    assert store.click_probability(user, a, 0) / store.appeal[a] > (
        store.click_probability(user, b, 0) / store.appeal[b]
    )
    assert store.click_probability(user, a, 0) > store.click_probability(user, a, 4)


def test_baselines_need_no_server_and_write_csv_and_png(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert (
        main(
            [
                "simulate",
                "--policy",
                "random",
                "--requests",
                "200",
                "--window",
                "50",
                "--out",
                str(tmp_path),
                "--url",
                "http://127.0.0.1:9",  # never contacted by a baseline
            ]
        )
        == 0
    )
    lines = (tmp_path / "simulate-random-seed0.csv").read_text().splitlines()
    assert lines[0] == "window,slates,impressions,clicks,ctr,purchases,revenue"
    assert len(lines) == 5
    assert (tmp_path / "simulate-random-seed0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_layout_ceiling_sits_between_random_and_the_oracle() -> None:
    store = Storefront.generate(120, 40, seed=2)
    k = 5
    random, oracle = store.random_ctr(k), store.oracle_ctr(k)
    ceiling = store.layout_ceiling(k, explore_slots=(4,), diverse_slots=(2,))
    exploring = store.layout_ceiling(k, explore_slots=(4,), diverse_slots=(2,), epsilon=0.05)
    assert random < exploring < ceiling < oracle
    assert store.layout_ceiling(k, (), ()) == oracle  # no reserved slots: the oracle itself
    # Every slot exploring: a random slate, up to the items already taken (none here).
    assert store.layout_ceiling(k, tuple(range(k)), ()) == pytest.approx(random)


def test_new_tastes_keep_the_catalog_and_change_the_shoppers() -> None:
    store = Storefront.generate(50, 20, seed=4)
    changed = store.with_new_tastes(seed=5)
    assert changed.items == store.items and changed.appeal == store.appeal
    assert changed.tastes.shape == store.tastes.shape
    assert not (changed.tastes == store.tastes).all()
    assert changed.tastes.sum(axis=1) == pytest.approx(1.0)


@pytest.mark.slow
def test_model_check_reads_a_kept_log_and_judges_the_model_by_the_click_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from benchmarks.model_check import as_logged, check, load, oracle_profile, uniform_top1

    _curve(tmp_path, "vw")
    storefront = Storefront.generate(300, 200, seed=SEED)
    logged = load(make_settings(tmp_path / "vw").database_url, storefront)
    assert len(logged) == 8 * 300
    assert all(len(d.shown) == 5 and len(d.actions) == len(d.catalog_index) for d in logged)
    clicks = sum(reward for d in logged for *_, reward in d.shown)
    assert 0 < clicks < 5 * len(logged)

    values, _ = storefront.values()
    args = "--cb_adf --cb_type dm -q ui -q ci -b 18 --power_t 0 -l 0.05"
    learned = check(args, logged, 1800, values, as_logged)
    told = check(args, logged, 1800, values, oracle_profile(storefront))
    uniform = uniform_top1(logged[1800:], values)
    assert uniform < learned["top1"] <= 1.0 and learned["top3"] <= 1.0
    # Told the true tastes, the model beats chance too. It need not beat the logged profile:
    # on this log (the placement feature and rotation in it) the logged profile scored 0.469
    # against the true tastes' 0.433; on earlier logs the true tastes won by about 0.01.
    assert uniform < told["top1"] <= 1.0


def test_the_full_storefront_buys_at_prices_visits_every_placement_and_keeps_the_rules(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """Purchases post a purchase reward with the price as its value, visits land on every
    placement, and the merchandiser's rules shape the server's slates."""
    from sqlalchemy import func, select

    from slatebandit.logging.schema import decisions, rewards
    from slatebandit.simulate import merchandiser_rules

    settings = make_settings(tmp_path, learner="off", api_keys="admin:a")
    storefront = Storefront.generate(300, 60, seed=SEED)
    rules = merchandiser_rules(storefront)
    campaign = rules["campaign"]["items"][0]
    with TestClient(create_app(settings)) as client:
        sim = Simulation(
            client,
            storefront,
            "vw",
            k=5,
            seed=SEED,
            headers={"x-api-key": "a"},
            purchases=True,
            placements=True,
            rules=rules,
        )
        sim.upload_catalog()
        window = sim.run_window(400)
        home = client.post(
            "/v1/slates", json={"user_id": "new", "k": 5}, headers={"x-api-key": "a"}
        ).json()
    assert home["items"][0]["item_id"] == campaign and home["items"][0]["kind"] == "pinned"
    assert set(window.placements) == {"home", "item", "cart", "category"}
    assert sum(t.slates for t in window.placements.values()) == window.slates == 400
    assert window.purchases > 0 and window.revenue > 0
    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        bought = conn.execute(
            select(func.count(), func.sum(rewards.c.value)).where(rewards.c.type == "purchase")
        ).one()
        placements = dict(
            conn.execute(select(decisions.c.placement, func.count()).group_by("placement")).all()
        )
    engine.dispose()
    assert bought[0] == window.purchases
    assert bought[1] == pytest.approx(window.revenue)
    assert {name: t.slates for name, t in window.placements.items()} == {
        name: count for name, count in placements.items() if name != "home"
    } | {"home": placements["home"] - 1}  # the last home slate was asked outside the window
