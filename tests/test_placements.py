"""Placements (home, item, cart, category) and next page, against real apps on SQLite.

An untrained model ties every score, so a dry run's candidates, best first, are in retrieval
order: that is where a placement's lead shows. The serving generator is seeded, so every slate
here is the same on every run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from sqlalchemy import Engine, select
from starlette.testclient import TestClient

from slatebandit.config import Settings
from slatebandit.items import Item
from slatebandit.logging import DecisionPayload, insert_event, open_engine
from slatebandit.logging.schema import decisions, events, item_revisions, rewards, slots
from slatebandit.recommender import Recommender, SlateQuery
from slatebandit.recommender.background import JOBS
from slatebandit.recommender.pages import MAX_CHARS, MAX_SHOWN, Page, read_page
from slatebandit.retrieval import (
    FRESH,
    POPULAR,
    SESSION,
    SIMILAR,
    SOURCES,
    Candidates,
    UserState,
    context_tokens,
    generate,
)
from slatebandit.retrieval.candidates import led_by
from slatebandit.retrieval.together import WINDOW, Together
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog

T = TypeVar("T")
ANCHOR = "sku-0000011"


@pytest.fixture
def settings(tmp_path: Path, small_catalog: list[Item]) -> Settings:
    settings = make_settings(tmp_path, learner="off")
    seed_catalog(settings.database_url, small_catalog)
    return settings


def _with_recommender(settings: Settings, work: Callable[[Recommender], Awaitable[T]]) -> T:
    """``work`` run against a started recommender (its background jobs too), then closed."""

    async def run() -> T:
        recommender = await Recommender.open(settings)
        await recommender.start()
        try:
            return await work(recommender)
        finally:
            await recommender.close()

    return asyncio.run(run())


def _slate(client: TestClient, **body: object) -> dict[str, Any]:
    response = client.post("/v1/slates", json={"k": 10, **body})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _ids(slate: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in slate["items"]]


def _exploited(slate: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in slate["items"] if item["kind"] == "exploit"]


def _logged(engine: Engine, event_id: str) -> tuple[str, DecisionPayload, list[int]]:
    """A decision's placement, payload and its candidates' item keys, as logged."""
    with engine.connect() as conn:
        placement, payload = conn.execute(
            select(decisions.c.placement, decisions.c.payload).where(
                decisions.c.event_id == event_id
            )
        ).one()
        decoded = DecisionPayload.decode(payload)
        revs = [int(rev) for rev in decoded.candidate_revs]
        key_of = dict(
            conn.execute(
                select(item_revisions.c.rev, item_revisions.c.key).where(
                    item_revisions.c.rev.in_(revs)
                )
            ).all()
        )
    return placement, decoded, [key_of[rev] for rev in revs]


# item ------------------------------------------------------------------------------------


def test_an_item_page_leads_with_the_anchors_nearest_neighbours(settings: Settings) -> None:
    async def work(r: Recommender) -> tuple[list[object], list[object], list[str]]:
        catalog, index = r.store.catalog, r.store.index
        keys, vectors = index.live_vectors(np.flatnonzero(catalog.available))
        anchor = catalog.key_of[ANCHOR]
        similarity = vectors @ vectors[list(keys).index(anchor)]
        nearest = [int(keys[i]) for i in np.argsort(-similarity) if keys[i] != anchor][:20]
        query = SlateQuery("ann", k=10, placement="item", item_id=ANCHOR, dry_run=True)
        decision = await r.decide(query)
        assert decision.candidates is not None
        first = [c["item_id"] for c in decision.candidates[:20]]
        sources = [c["source"] for c in decision.candidates[:20]]
        return first, sources, [str(catalog.item_ids[key]) for key in nearest]

    first, sources, nearest = _with_recommender(settings, work)
    assert sources == ["similar"] * 20
    assert len(set(first) & set(nearest)) >= 18  # HNSW against brute force
    assert ANCHOR not in first


def test_an_item_page_never_shows_its_anchor_and_shows_its_neighbours(
    client: TestClient,
) -> None:
    near = client.get(f"/v1/items/{ANCHOR}", params={"neighbours": 100}).json()["neighbours"]
    neighbours = {n["item_id"] for n in near}
    exploited = []
    for i in range(20):
        slate = _slate(client, user_id=f"u{i}", placement="item", item_id=ANCHOR)
        assert ANCHOR not in _ids(slate)
        exploited += _exploited(slate)
    # Exploit slots take the best candidate but for epsilon: nearly all are neighbours.
    assert sum(item in neighbours for item in exploited) >= 0.9 * len(exploited)


# cart ------------------------------------------------------------------------------------


def _cart_together(client: TestClient, cart: str, partners: list[str]) -> None:
    """Shoppers who cart ``cart``, then buy each of ``partners`` (the first most often)."""
    for n, partner in enumerate(partners):
        for shopper in range(len(partners) - n):
            user = f"shopper-{partner}-{shopper}"
            for item, kind in ((cart, "add_to_cart"), (partner, "purchase")):
                event = {"user_id": user, "item_id": item, "type": kind}
                assert client.post("/v1/events", json=event).status_code == 202


def test_a_cart_leads_with_what_was_bought_with_it_on_a_worker_started_later(
    settings: Settings,
) -> None:
    cart, partners = "sku-0000100", ["sku-0000200", "sku-0000300", "sku-0000400"]
    with TestClient(create_app(settings)) as first_worker:
        _cart_together(first_worker, cart, partners)
    with TestClient(create_app(settings)) as worker:  # reads the recent history as it starts
        body = {"user_id": "d", "k": 10, "placement": "cart", "items": [cart]}
        dry = worker.post("/v1/slates?dry_run=true", json=body).json()
        assert [c["item_id"] for c in dry["candidates"][:3]] == partners
        assert {c["source"] for c in dry["candidates"][:3]} == {"similar"}
        firsts = []
        for i in range(20):
            slate = _slate(worker, user_id=f"u{i}", placement="cart", items=[cart], k=5)
            assert cart not in _ids(slate)
            firsts.append(_ids(slate)[0])
    # Slot 0 exploits: the best candidate, but for epsilon's draws (0.05).
    assert firsts.count(partners[0]) >= 15  # 19 expected; 15 or fewer: p < 0.003


def test_a_cart_falls_back_to_the_neighbours_of_its_items_and_never_shows_them(
    client: TestClient,
) -> None:
    cart = ["sku-0000021", "sku-0000042"]
    neighbours = set()
    for item in cart:
        near = client.get(f"/v1/items/{item}", params={"neighbours": 30}).json()["neighbours"]
        neighbours |= {n["item_id"] for n in near}
    exploited = []
    for i in range(20):
        slate = _slate(client, user_id=f"c{i}", placement="cart", items=cart)
        assert not set(cart) & set(_ids(slate))
        exploited += _exploited(slate)
    assert sum(item in neighbours for item in exploited) >= 0.9 * len(exploited)


def test_the_declared_job_brings_carts_and_purchases_from_events_and_rewards(
    settings: Settings,
) -> None:
    """A purchase rewarded on a slate is a cart action too; the job in ``JOBS`` counts what
    another worker recorded since this one started."""
    job = next(job for job in JOBS if job.name.startswith("bought-together"))
    with TestClient(create_app(settings)) as other:
        bought = other.post("/v1/slates", json={"user_id": "bob", "k": 3}).json()
        first = bought["items"][0]["item_id"]

    async def work(r: Recommender) -> list[object]:
        before = await r.decide(SlateQuery("x", k=5, placement="cart", cart=[first]))
        assert "sku-0000333" not in [item["item_id"] for item in before.items]
        with TestClient(create_app(settings)) as worker:  # another worker, same database
            reward = {"event_id": bought["event_id"], "item_id": first, "type": "purchase"}
            assert worker.post("/v1/rewards", json=reward).status_code == 202
            event = {"user_id": "bob", "item_id": "sku-0000333", "type": "add_to_cart"}
            assert worker.post("/v1/events", json=event).status_code == 202
        await job.run(r)
        after = await r.decide(SlateQuery("y", k=5, placement="cart", cart=[first]))
        return [item["item_id"] for item in after.items]

    assert _with_recommender(settings, work)[0] == "sku-0000333"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path, small_catalog: list[Item]) -> str:
    """An empty database of either kind, with the catalog's first items (keys 1 to 10)."""
    if request.param == "sqlite":
        url = make_settings(tmp_path).database_url
    else:
        url = request.getfixturevalue("pg_url")
    seed_catalog(url, small_catalog[:10])
    return url


def test_together_counts_each_pair_once_per_basket_within_the_window(database: str) -> None:
    engine = open_engine(database)
    start = 1_000_000.0
    actions = [
        ("ann", 1, "add_to_cart", start),
        ("ann", 2, "add_to_cart", start + 10),
        ("ann", 1, "purchase", start + 20),  # already in her basket: nothing new
        ("ann", 2, "purchase", start + 20),
        ("ann", 3, "view", start + 30),  # not a cart action
        ("bob", 1, "add_to_cart", start),
        ("bob", 3, "purchase", start + WINDOW + 1),  # a day later: not together
        ("cat", 2, "add_to_cart", start),
        ("cat", 4, "add_to_cart", start + 5),
    ]
    with engine.begin() as conn:
        for user, key, kind, at in actions:
            insert_event(conn, user_id=user, item_key=key, type=kind, created_at=at)
    together = Together()
    assert together.refresh(engine) == 8
    assert together.of([1], 10) == [2]
    assert together.of([2], 10) == [1, 4]
    assert together.of([1, 2], 10) == [4]  # a cart's own items are never proposed
    with engine.begin() as conn:  # later, recorded by another worker
        insert_event(conn, user_id="dan", item_key=4, type="purchase", created_at=start)
        insert_event(conn, user_id="dan", item_key=1, type="purchase", created_at=start + 1)
        insert_event(conn, user_id="eve", item_key=4, type="purchase", created_at=start)
        insert_event(conn, user_id="eve", item_key=1, type="purchase", created_at=start + 1)
    assert together.refresh(engine) == 4
    assert together.of([1], 10) == [4, 2]  # two shoppers against one
    assert together.refresh(engine) == 0  # nothing is counted twice
    engine.dispose()


def test_a_lead_goes_first_and_keeps_the_flags_the_generators_gave_it() -> None:
    rest = Candidates(
        keys=np.array([3, 7, 9], dtype=np.int64),
        flags=np.array([FRESH, POPULAR, SESSION], dtype=np.uint8),
        sources=np.array([3, 2, 1], dtype=np.uint8),
    )
    led = led_by(np.array([5, 3], dtype=np.int64), rest, limit=4)
    assert led.keys.tolist() == [5, 3, 7, 9]
    assert led.flags.tolist() == [SIMILAR, SIMILAR | FRESH, POPULAR, SESSION]
    assert led.source_names() == ["similar", "similar", "popular", "session"]
    assert led_by(np.array([5, 3], dtype=np.int64), rest, limit=3).keys.tolist() == [5, 3, 7]


# category --------------------------------------------------------------------------------


def test_a_category_page_shows_only_that_category_on_every_page(
    client: TestClient, small_catalog: list[Item]
) -> None:
    # A category whose name extends "men" is not under it.
    extra = {"item_id": "menswear-1", "title": "Menswear coat", "category": "menswear/coats"}
    assert client.put("/v1/items", json=[extra]).status_code == 200
    category = {item.item_id: item.category for item in small_catalog} | {"menswear-1": "x"}
    under_men = {i for i, c in category.items() if c == "men" or c.startswith("men/")}
    for user in ("a", "b"):
        body = {"user_id": user, "placement": "category", "category": "men"}
        token = None
        for _ in range(3):
            slate = _slate(client, **body, page_token=token)
            assert len(slate["items"]) == 10 and set(_ids(slate)) <= under_men
            token = slate["next_page"]
    shoes = _slate(
        client,
        user_id="c",
        placement="category",
        category="men",
        filters={"category": ["men/shoes", "women"]},
    )
    assert {category[i] for i in _ids(shoes)} <= {"men/shoes/boots", "men/shoes/sneakers"}


# home and what is logged -----------------------------------------------------------------


def test_home_is_the_default_and_its_candidates_are_the_generators(settings: Settings) -> None:
    context: dict[str, str | int] = {"hour": 3, "device": "mobile"}  # the same both sides

    async def work(r: Recommender) -> tuple[list[Any], list[Any], list[Any]]:
        implicit = await r.decide(SlateQuery("h", k=10, context=context, dry_run=True))
        explicit = await r.decide(
            SlateQuery("h", k=10, context=context, dry_run=True, placement="home")
        )
        tokens = context_tokens({**context, "placement": "home"})
        generated = generate(r.store, UserState(), [], set(), r.settings.candidates, context=tokens)
        catalog = r.store.catalog
        expected = [
            {"item_id": catalog.item_ids[int(key)], "score": 0.0, "source": SOURCES[source]}
            for key, source in zip(generated.keys, generated.sources, strict=True)
        ]
        return implicit.candidates or [], explicit.candidates or [], expected

    implicit, explicit, expected = _with_recommender(settings, work)
    assert len(expected) >= 50 and implicit == explicit == expected


def test_the_placement_is_logged_and_is_a_context_feature(
    client: TestClient, settings: Settings, small_catalog: list[Item]
) -> None:
    bodies: dict[str, dict[str, object]] = {
        "home": {},
        "item": {"placement": "item", "item_id": ANCHOR},
        "cart": {"placement": "cart", "items": ["sku-0000021"]},
        "category": {"placement": "category", "category": "kids"},
    }
    engine = open_engine(settings.database_url)
    logged = {}
    for name, fields in bodies.items():
        context = {"device": "tv", "placement": "spoofed"}
        slate = _slate(client, user_id=f"p-{name}", context=context, **fields)
        placement, payload, _ = _logged(engine, slate["event_id"])
        assert placement == name
        assert payload.context["c"]["placement"] == name  # the server's, not the request's
        assert payload.context["c"]["device"] == "tv"
        logged[name] = payload.context
    engine.dispose()
    # What an item page shows is the shopper's most recent item, for the scorer too.
    category = {item.item_id: item.category for item in small_catalog}
    assert logged["item"]["u"][:1] == [category[ANCHOR]]
    assert logged["cart"]["u"][:1] == [category["sku-0000021"]]
    assert logged["home"]["u"] == []  # a new shopper


# next page -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"placement": "item", "item_id": ANCHOR},
        {"placement": "cart", "items": ["sku-0000021", "sku-0000042"]},
        {"placement": "category", "category": "women"},
    ],
    ids=["home", "item", "cart", "category"],
)
def test_three_pages_repeat_nothing_and_log_exact_slots(
    client: TestClient, settings: Settings, fields: dict[str, object]
) -> None:
    engine = open_engine(settings.database_url)
    token, seen = None, list[str]()
    for _ in range(3):
        slate = _slate(client, user_id="pager", k=8, **fields, page_token=token)
        shown = [(item["item_id"], item["slot"], item["propensity"]) for item in slate["items"]]
        assert [slot for _, slot, _ in shown] == list(range(8))
        assert all(0 < propensity <= 1 for _, _, propensity in shown)
        assert not set(_ids(slate)) & set(seen)
        # Earlier pages were excluded before scoring: they are not among the candidates
        # whose pmfs the logged propensities come from.
        _, _, candidates = _logged(engine, slate["event_id"])
        key_of = {item_id: key for key, item_id in _item_keys(engine).items()}
        assert not {key_of[i] for i in seen} & set(candidates)
        with engine.connect() as conn:
            logged = conn.execute(
                select(slots.c.slot, slots.c.item_key, slots.c.propensity)
                .join(decisions, decisions.c.id == slots.c.decision_id)
                .where(decisions.c.event_id == slate["event_id"])
                .order_by(slots.c.slot)
            ).all()
        assert [(s, k, p) for s, k, p in logged] == [
            (slot, key_of[item], propensity) for item, slot, propensity in shown
        ]
        seen += _ids(slate)
        token = slate["next_page"]
        assert token is not None
    assert len(seen) == 24
    engine.dispose()


def _item_keys(engine: Engine) -> dict[int, str]:
    from slatebandit.logging.schema import items

    with engine.connect() as conn:
        return dict(conn.execute(select(items.c.key, items.c.item_id)).all())


def test_a_page_token_works_on_another_worker(settings: Settings) -> None:
    body = {"user_id": "w", "k": 10, "placement": "item", "item_id": ANCHOR}
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        first = _slate(one, **body)
        second = _slate(two, **body, page_token=first["next_page"])
    assert len(second["items"]) == 10 and not set(_ids(first)) & set(_ids(second))


def test_an_item_added_through_one_worker_is_known_to_the_next_request_on_another(
    tmp_path: Path, small_catalog: list[Item]
) -> None:
    """A client whose PUT was answered may send its next request to the other worker (a
    connection closed and opened again): that worker syncs its catalog rather than answer
    404, though its own poll is an hour away."""
    settings = make_settings(tmp_path, learner="off", catalog_poll_seconds=3600)
    seed_catalog(settings.database_url, small_catalog)
    new = {"item_id": "just-added", "category": "kids/toys/plush", "title": "a new plush"}
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        assert one.put("/v1/items", json=[new]).status_code == 200
        view = {"user_id": "w", "item_id": "just-added", "type": "view"}
        assert two.post("/v1/events", json=view).status_code == 202
        page = {"user_id": "w", "k": 5, "placement": "item", "item_id": "just-added"}
        assert two.post("/v1/slates", json=page).status_code == 200
        cart = {"user_id": "w", "k": 5, "placement": "cart", "items": ["another-new"]}
        assert one.put("/v1/items", json=[{**new, "item_id": "another-new"}]).status_code == 200
        shown = two.post("/v1/slates", json=cart)
        assert shown.status_code == 200
        unknown = {**view, "item_id": "never-added"}
        assert two.post("/v1/events", json=unknown).status_code == 404  # still, when it is not
        missing = {**page, "item_id": "never-added"}
        answer = two.post("/v1/slates", json=missing)
        assert answer.status_code == 400 and answer.json()["error"]["field"] == "item_id"


def test_a_chain_ends_at_its_limit_and_tokens_stay_bounded() -> None:
    request = b"12345678"
    almost = Page("home", request, tuple(range(MAX_SHOWN - 10)))
    token = almost.next_token(list(range(1_000_000, 1_000_010)), 10)
    assert token is not None and len(token) <= MAX_CHARS
    full = read_page(token, "home", request)
    assert len(full.shown) == MAX_SHOWN and full.shown[-1] == 1_000_009
    assert full.next_token([1, 2], 2) is None  # past the limit: the chain ends
    assert Page("home", request).next_token([1, 2], 3) is None  # a short page: nothing more


def test_a_short_page_ends_the_chain(client: TestClient) -> None:
    body = {"user_id": "s", "k": 10, "filters": {"category": ["kids/toys/plush"]}}
    token, pages = None, 0
    while True:
        slate = _slate(client, **body, page_token=token)
        pages += 1
        token = slate["next_page"]
        if token is None:
            break
        assert len(slate["items"]) == 10 and pages < 20
    assert len(slate["items"]) < 10


# bad input -------------------------------------------------------------------------------


def _token(client: TestClient, **body: object) -> str:
    token: str = _slate(client, user_id="t", **body)["next_page"]
    return token


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"placement": "footer"}, "placement"),
        ({"placement": 3}, "placement"),
        ({"placement": "item"}, "item_id"),
        ({"placement": "item", "item_id": "no-such-item"}, "item_id"),
        ({"item_id": ANCHOR}, "item_id"),
        ({"placement": "cart"}, "items"),
        ({"placement": "cart", "items": ["sku-0000001", "nope"]}, "items[1]"),
        ({"placement": "item", "item_id": ANCHOR, "items": ["sku-0000001"]}, "items"),
        ({"placement": "category"}, "category"),
        ({"placement": "category", "category": "///"}, "category"),
        ({"category": "men"}, "category"),
        (
            {"placement": "category", "category": "men", "filters": {"category": ["women"]}},
            "filters.category",
        ),
        ({"page_token": "not a token"}, "page_token"),
        ({"page_token": "AAAA"}, "page_token"),
        ({"page_token": "A" * (MAX_CHARS + 1)}, "page_token"),
        ({"page_token": ""}, "page_token"),
    ],
)
def test_bad_placements_and_tokens_are_400s_naming_the_field_and_write_nothing(
    client: TestClient, settings: Settings, body: dict[str, object], field: str
) -> None:
    response = client.post("/v1/slates", json={"user_id": "t", **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field
    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        for table in (decisions, events, rewards):
            assert conn.execute(select(table)).first() is None
    engine.dispose()


def test_a_token_continues_only_its_own_request(client: TestClient) -> None:
    home = _token(client)
    item = _token(client, placement="item", item_id=ANCHOR)
    misuse = [
        {"user_id": "t", "placement": "item", "item_id": ANCHOR, "page_token": home},
        {"user_id": "t", "page_token": item},
        {"user_id": "t", "placement": "item", "item_id": "sku-0000012", "page_token": item},
        {"user_id": "other", "page_token": home},
        {"user_id": "t", "filters": {"brand": ["x"]}, "page_token": home},
        {"user_id": "t", "page_token": "B" + home[1:]},  # another version byte
    ]
    for body in misuse:
        response = client.post("/v1/slates", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["field"] == "page_token"
    # The same request with another k or context continues the chain.
    again = {"user_id": "t", "k": 3, "context": {"device": "tv"}, "page_token": home}
    assert client.post("/v1/slates", json=again).status_code == 200
