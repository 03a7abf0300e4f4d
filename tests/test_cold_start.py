"""Cold start: a new shopper's first slate, and the slate right after their first click."""

from __future__ import annotations

import numpy as np

from slatebandit.bandit import SharedFeatures
from slatebandit.logging import DecisionPayload, open_engine
from slatebandit.logging.schema import decisions
from slatebandit.retrieval.content import clean


def test_a_first_click_reshapes_the_very_next_slate(client, small_catalog, settings) -> None:  # type: ignore[no-untyped-def]
    """For 40 new shoppers: the first slate holds no similar or session items; after a click
    (a reward, as a click tracker sends it) on one item, the next slate is built around it:
    the share of it within the clicked item's category or 20 nearest neighbours is at least
    twice what it was in the first slate (the other items of that slate)."""
    services = client.app_state["recommender"]
    catalog, index = services.store.catalog, services.store.index
    before, after_shares = [], []
    for user in range(40):
        first = client.post("/v1/slates", json={"user_id": f"new{user}", "k": 10}).json()
        assert {i["source"] for i in first["items"]} <= {"popular", "fresh", "context"}
        assert len(first["items"]) == 10
        clicked = first["items"][user % 10]["item_id"]
        reward = {"event_id": first["event_id"], "item_id": clicked}
        assert client.post("/v1/rewards", json=reward).status_code == 202
        after = client.post("/v1/slates", json={"user_id": f"new{user}", "k": 10}).json()
        key = catalog.key_of[clicked]
        neighbours = set(index.query(index.vectors([key]), 21)[0][0].tolist())

        def near(items, clicked=clicked, key=key, neighbours=neighbours):  # type: ignore[no-untyped-def]
            keys = [catalog.key_of[i["item_id"]] for i in items if i["item_id"] != clicked]
            return np.mean(
                [catalog.category[k] == catalog.category[key] or k in neighbours for k in keys]
            )

        assert {"similar", "session"} & {i["source"] for i in after["items"]}
        before.append(near(first["items"]))
        after_shares.append(near(after["items"]))
    print(
        f"share near the clicked item: {np.mean(before):.2f} of the first slate, "
        f"{np.mean(after_shares):.2f} of the next"
    )
    assert np.mean(after_shares) >= 2 * np.mean(before)


def test_the_users_profile_reaches_the_scorer_and_the_log(client, small_catalog, settings) -> None:  # type: ignore[no-untyped-def]
    shoe = next(i for i in small_catalog if i.category.startswith("women/shoes"))
    shirt = next(
        i for i in small_catalog if i.category.startswith("men/shirts") and i.brand != shoe.brand
    )
    for kind in ("view", "click", "purchase"):
        event = {"user_id": "ann", "item_id": shoe.item_id, "type": kind}
        assert client.post("/v1/events", json=event).status_code == 202
    event = {"user_id": "ann", "item_id": shirt.item_id, "type": "view"}
    assert client.post("/v1/events", json=event).status_code == 202
    answer = client.post("/v1/slates", json={"user_id": "ann", "k": 5}).json()
    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        from sqlalchemy import select

        payload = conn.execute(
            select(decisions.c.payload).where(decisions.c.event_id == answer["event_id"])
        ).scalar_one()
    engine.dispose()
    profile = DecisionPayload.decode(payload).context["p"]
    # Each valued by its share of the events, weighted (view 1, click 2, purchase 4) and faded
    # by the actions after it: the scorer learns which taste comes first, not only which are
    # there. Without fading the shares would be 7/8 and 1/8.
    fade = 0.5 ** (1 / settings.taste_half_life)
    shoes = 1 * fade**3 + 2 * fade**2 + 4 * fade  # three actions follow the view, two the click
    share = f"{shoes / (shoes + 1):.3g}"
    other = f"{1 / (shoes + 1):.3g}"
    assert (share, other) == ("0.863", "0.137")
    assert f"tc={shoe.category}:{share}" in profile and f"tb={shoe.brand}:{share}" in profile
    assert f"tc={shirt.category}:{other}" in profile and f"tb={shirt.brand}:{other}" in profile
    line = SharedFeatures.from_log(DecisionPayload.decode(payload).context).line()
    assert f"tc={clean(shoe.category)}:{share}" in line.split()


def test_a_new_shopper_gets_what_shoppers_in_the_same_context_engaged_with(
    client, small_catalog
) -> None:  # type: ignore[no-untyped-def]
    """Tablet shoppers on the kids page click kids' items; a brand-new shopper on a tablet on
    that page gets some of those items from the context generator in their first slate."""
    clicked: set[str] = set()
    context = {"device": "tablet", "page": "kids"}
    for user in range(30):
        body = client.post(
            "/v1/slates", json={"user_id": f"t{user}", "k": 10, "context": context}
        ).json()
        for item in body["items"]:
            if item["item_id"] in {
                i.item_id for i in small_catalog if i.category.startswith("kids/")
            }:
                reward = {"event_id": body["event_id"], "item_id": item["item_id"]}
                assert client.post("/v1/rewards", json=reward).status_code == 202
                clicked.add(item["item_id"])
    assert clicked
    first = client.post(
        "/v1/slates", json={"user_id": "newcomer", "k": 10, "context": context}
    ).json()["items"]
    from_context = [i["item_id"] for i in first if i["source"] == "context"]
    assert from_context and set(from_context) <= clicked
