"""``GET /v1/items`` (search) and ``GET /v1/items/{item_id}`` (an item and its neighbours)."""

from __future__ import annotations

import numpy as np
import pytest
from starlette.testclient import TestClient

from slatebandit.items import Item


def test_search_matches_id_or_title_in_any_case_and_treats_wildcards_literally(
    client: TestClient, small_catalog: list[Item]
) -> None:
    target = small_catalog[7]
    word = target.title.split()[0]
    found = client.get("/v1/items", params={"q": word.upper(), "limit": 100}).json()["items"]
    expected = sorted(
        i.item_id
        for i in small_catalog
        if word.lower() in i.title.lower() or word.lower() in i.item_id.lower()
    )[:100]
    assert [i["item_id"] for i in found] == expected
    assert all(set(i) >= {"title", "category", "brand", "price", "impressions"} for i in found)
    assert client.get("/v1/items", params={"q": "%"}).json()["items"] == []
    assert client.get("/v1/items", params={"q": "_"}).json()["items"] == []
    assert len(client.get("/v1/items").json()["items"]) == 20  # no text: the first 20 by id


def test_an_item_comes_with_its_nearest_neighbours(
    client: TestClient, small_catalog: list[Item]
) -> None:
    target = small_catalog[11].item_id
    body = client.get(f"/v1/items/{target}", params={"neighbours": 5}).json()
    assert body["item"]["item_id"] == target
    neighbours = body["neighbours"]
    assert len(neighbours) == 5 and target not in {n["item_id"] for n in neighbours}
    similarities = [n["similarity"] for n in neighbours]
    assert similarities == sorted(similarities, reverse=True)
    # Deleted, it is neither found nor anyone's neighbour.
    gone = neighbours[0]["item_id"]
    assert client.delete(f"/v1/items/{gone}").status_code == 200
    assert client.get(f"/v1/items/{gone}").status_code == 404
    again = client.get(f"/v1/items/{target}", params={"neighbours": 5}).json()["neighbours"]
    assert gone not in {n["item_id"] for n in again}
    assert np.isfinite([n["similarity"] for n in again]).all()


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/items?limit=0", "limit"),
        ("/v1/items?limit=101", "limit"),
        ("/v1/items?limit=x", "limit"),
        ("/v1/items?limit=²", "limit"),
        ("/v1/items?q=" + "a" * 129, "q"),
        ("/v1/items/sku-0000001?neighbours=-1", "neighbours"),
        ("/v1/items/no-such-item", "item_id"),
    ],
)
def test_bad_reads_name_the_field(client: TestClient, path: str, field: str) -> None:
    answer = client.get(path)
    assert 400 <= answer.status_code < 500
    assert answer.json()["error"]["field"] == field
