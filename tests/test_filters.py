"""Business filters inside the candidate stage: slates stay full and hold only allowed items."""

from __future__ import annotations

import numpy as np
import pytest

from slatebandit.items import Item
from slatebandit.retrieval import filters as filters_module
from slatebandit.retrieval.filters import FilterMasks, Filters


def _by_id(items: list[Item]) -> dict[str, Item]:
    return {item.item_id: item for item in items}


def _slate(client, **body):  # type: ignore[no-untyped-def]
    answer = client.post("/v1/slates", json={"user_id": "shopper", "k": 10, **body})
    assert answer.status_code == 200, answer.json()
    return [item["item_id"] for item in answer.json()["items"]]


@pytest.mark.parametrize("exact_limit", [20_000, 5], ids=["exact search", "hnsw over-fetch"])
def test_filtered_slates_are_full_and_hold_only_allowed_items(
    client, small_catalog, monkeypatch, exact_limit
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(filters_module, "EXACT_LIMIT", exact_limit)
    items = _by_id(small_catalog)
    seen = [i.item_id for i in small_catalog if i.category.startswith("women/")][:3]
    for body, allowed in [
        ({"category": ["women"]}, lambda i: i.category.split("/")[0] == "women"),
        (
            {"category": ["men/suits", "kids"]},
            lambda i: i.category == "men/suits" or i.category.startswith("kids/"),
        ),
        ({"price_max": 30.0}, lambda i: i.price is not None and i.price <= 30.0),
        ({"price_min": 50, "price_max": 80}, lambda i: i.price is not None and 50 <= i.price <= 80),
        ({"attributes": {"color": "red"}}, lambda i: i.attributes.get("color") == "red"),
        (
            {"category": ["men"], "attributes": {"color": "black"}},
            lambda i: i.category.startswith("men/") and i.attributes.get("color") == "black",
        ),
    ]:
        expected = sum(allowed(i) for i in small_catalog)
        for session in ([], seen):  # without and with similar/session generators
            slate = _slate(client, filters=body, session_items=session)
            assert len(slate) == min(10, expected), body
            assert all(allowed(items[i]) for i in slate), body


def test_a_filter_with_fewer_items_than_k_gives_them_all(client, small_catalog) -> None:  # type: ignore[no-untyped-def]
    brand = small_catalog[0].brand
    wanted = {i.item_id for i in small_catalog if i.brand == brand}
    assert 0 < len(wanted) < 10
    assert set(_slate(client, filters={"brand": [brand.upper()]})) == wanted
    assert _slate(client, filters={"category": ["no-such-category"]}) == []


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"price_min": 10, "price_max": 5}, "filters"),
        ({"price_max": -1}, "filters.price_max"),
        ({"colour": ["red"]}, "filters.colour"),
        ({"category": "women"}, "filters.category"),
    ],
)
def test_bad_filters_are_refused_naming_the_field(client, filters, field) -> None:  # type: ignore[no-untyped-def]
    answer = client.post("/v1/slates", json={"user_id": "u", "filters": filters})
    assert answer.status_code == 400
    assert answer.json()["error"]["field"] == field


def test_exact_neighbours_inside_a_filter_match_brute_force(client, small_catalog) -> None:  # type: ignore[no-untyped-def]
    store = client.app_state["recommender"].store
    allowed = FilterMasks().allowed(Filters(categories=("home",)), store.catalog, store.index)
    keys = np.flatnonzero(allowed.mask)
    vectors = store.index.vectors(keys)
    query = np.random.default_rng(0).standard_normal((3, vectors.shape[1])).astype(np.float32)
    got = allowed.neighbours(store.index, query, 15)
    truth = keys[np.argsort(-(query @ vectors.T), axis=1)[:, :15]]
    assert np.array_equal(got, truth)
