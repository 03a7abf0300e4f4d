"""Drive a slatebandit server as a storefront would, and measure click-through per window.

Speaks only HTTP (any httpx-compatible client): uploads the storefront's catalog, asks for a
slate per visit, rolls the hidden click model, and posts each click as a reward and the product
view it leads to as a shopper event. ``random`` and ``popular`` are baselines computed here, on
the same traffic and click model, without asking the server: random shows k random items;
popular shows the k items clicked most so far.

Options make the storefront a fuller one:
    purchases   a click may end in a purchase (``Storefront.purchase_probability``): the
                shopper adds the item to their cart (an event) and buys it (a ``purchase``
                reward carrying the price as its ``value``)
    placements  a visit lands on the home page (55%), an item page (20%: the shopper's last
                clicked item, else a random one), their cart (10%, once they have bought) or
                a category page (15%: a category drawn by their tastes)
    rules       a merchandiser's rules, PUT before the first visit (``merchandiser_rules``)
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slatebandit.simulate.storefront import CATEGORIES, DEVICES, Storefront

POLICIES = ("vw", "random", "popular")
VISITS_PER_HOUR = 500
CART_ITEMS = 5  # the most recent purchases a shopper's cart shows


@dataclass
class Tally:
    slates: int = 0
    impressions: int = 0
    clicks: int = 0
    purchases: int = 0
    revenue: float = 0.0

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    @property
    def revenue_per_slate(self) -> float:
        return self.revenue / self.slates if self.slates else 0.0

    def to_dict(self) -> dict[str, float]:
        return {
            "slates": self.slates,
            "ctr": round(self.ctr, 5),
            "purchases": self.purchases,
            "revenue_per_slate": round(self.revenue_per_slate, 3),
        }


@dataclass
class Window(Tally):
    index: int = 0
    placements: dict[str, Tally] = field(default_factory=dict)


def merchandiser_rules(storefront: Storefront) -> dict[str, dict[str, Any]]:
    """A merchandiser's week: a campaign item pinned first on the home page, running gear
    promoted in a fifth of the slots, one brand boosted, home decor buried."""
    campaign = next(i.item_id for i in storefront.items if i.category == "sport/running")
    return {
        "campaign": {"action": "pin", "items": [campaign], "slots": [0], "placements": ["home"]},
        "running-month": {
            "action": "promote",
            "filter": {"category": ["sport/running"]},
            "share": 0.2,
        },
        "nova-week": {"action": "boost", "filter": {"brand": ["Nova"]}, "weight": 0.2},
        "decor-clearance-ended": {
            "action": "bury",
            "filter": {"category": ["home/decor"]},
            "weight": 0.3,
        },
    }


@dataclass
class Simulation:
    client: Any  # an httpx.Client (or Starlette's TestClient) with the server's base URL
    storefront: Storefront
    policy: str = "vw"
    k: int = 5
    seed: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    windows: list[Window] = field(default_factory=list)
    purchases: bool = False
    placements: bool = False
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        self.rng = np.random.default_rng(self.seed)
        self.ids = [item.item_id for item in self.storefront.items]
        self.clicked = dict.fromkeys(self.ids, 0)
        self.visits = 0
        self.last_clicked: dict[int, str] = {}
        self.carts: dict[int, list[str]] = {}

    def upload_catalog(self, chunk: int = 1000) -> None:
        """The catalog, and the merchandiser's rules if any."""
        for start in range(0, len(self.storefront.items), chunk):
            items = [i.model_dump() for i in self.storefront.items[start : start + chunk]]
            self._ok(self.client.put("/v1/items", json=items, headers=self.headers))
        for name, rule in self.rules.items():
            self._ok(self.client.put(f"/v1/rules/{name}", json=rule, headers=self.headers))

    def run_window(self, visits: int) -> Window:
        window = Window(index=len(self.windows))
        for _ in range(visits):
            self._visit(window)
        self.windows.append(window)
        return window

    def learn(self, learner: Any, together: Any = None) -> int | None:
        """Between windows, with the server in this process (a TestClient) and its background
        jobs held still: ``together`` (the recommender's bought-together counts) is extended,
        ``learner`` learns every decision as if their reward windows had passed, checkpoints,
        and the checkpoint is promoted. Returns its version (None: nothing new to learn)."""
        if together is not None:
            together.refresh(learner.engine)
        learner.run_due(now=time.time() + 3600)
        version: int | None = learner.checkpoint()
        if version is not None:
            self.client.post(f"/v1/models/{version}/promote", headers=self.headers)
        return version

    def _visit(self, window: Window) -> None:
        user = int(self.rng.integers(len(self.storefront.tastes)))
        context = {
            "device": DEVICES[int(self.rng.integers(len(DEVICES)))],
            "hour": (self.visits // VISITS_PER_HOUR) % 24,  # the simulated clock, not the wall's
        }
        self.visits += 1
        placement = self._placement(user) if self.placements else {"placement": "home"}
        shown, event_id = self._slate(user, context, placement)
        tallies = [window, window.placements.setdefault(str(placement["placement"]), Tally())]
        for tally in tallies:
            tally.slates += 1
            tally.impressions += len(shown)
        for slot, item_id in enumerate(shown):
            if self.rng.random() >= self.storefront.click_probability(user, item_id, slot):
                continue
            for tally in tallies:
                tally.clicks += 1
            self.clicked[item_id] += 1
            self.last_clicked[user] = item_id
            if event_id is not None:
                reward = {"event_id": event_id, "item_id": item_id, "type": "click"}
                self._ok(self.client.post("/v1/rewards", json=reward, headers=self.headers))
                # The click opens the product page: the shopper's view is an event.
                self._event(user, item_id, "view")
            if self.purchases and self.rng.random() < self.storefront.purchase_probability(item_id):
                self._purchase(user, item_id, event_id, tallies)

    def _purchase(
        self, user: int, item_id: str, event_id: str | None, tallies: list[Tally]
    ) -> None:
        price = self.storefront.prices[item_id]
        for tally in tallies:
            tally.purchases += 1
            tally.revenue += price
        self.carts[user] = [*self.carts.get(user, [])[-(CART_ITEMS - 1) :], item_id]
        if event_id is not None:
            self._event(user, item_id, "add_to_cart")
            reward = {"event_id": event_id, "item_id": item_id, "type": "purchase", "value": price}
            self._ok(self.client.post("/v1/rewards", json=reward, headers=self.headers))

    def _event(self, user: int, item_id: str, type: str) -> None:
        event = {"user_id": f"shopper-{user}", "item_id": item_id, "type": type}
        self._ok(self.client.post("/v1/events", json=event, headers=self.headers))

    def _placement(self, user: int) -> dict[str, Any]:
        """Where this visit lands, with what that page is about (the slate request's fields)."""
        draw = self.rng.random()
        if draw < 0.55:
            return {"placement": "home"}
        if draw < 0.75:
            anchor = self.last_clicked.get(user)
            if anchor is None:
                anchor = self.ids[int(self.rng.integers(len(self.ids)))]
            return {"placement": "item", "item_id": anchor}
        if draw < 0.85 and self.carts.get(user):
            return {"placement": "cart", "items": list(self.carts[user])}
        if draw < 0.85:
            return {"placement": "home"}
        tastes = self.storefront.tastes[user]
        category = CATEGORIES[int(self.rng.choice(len(tastes), p=tastes / tastes.sum()))]
        return {"placement": "category", "category": category}

    def _slate(
        self, user: int, context: dict[str, Any], placement: dict[str, Any]
    ) -> tuple[list[str], str | None]:
        if self.policy == "random":
            return [
                self.ids[i] for i in self.rng.choice(len(self.ids), self.k, replace=False)
            ], None
        if self.policy == "popular":
            noise = self.rng.random(len(self.ids))  # random order among equally clicked items
            counts = np.fromiter(self.clicked.values(), dtype=float, count=len(self.ids))
            top = np.lexsort((noise, -counts))[: self.k]
            return [self.ids[i] for i in top], None
        request = {"user_id": f"shopper-{user}", "k": self.k, "context": context, **placement}
        body = self._ok(self.client.post("/v1/slates", json=request, headers=self.headers))
        return [item["item_id"] for item in body["items"]], body["event_id"]

    @staticmethod
    def _ok(response: Any) -> Any:
        if response.status_code >= 400:
            raise RuntimeError(f"server answered {response.status_code}: {response.text}")
        return response.json()

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(
                ["window", "slates", "impressions", "clicks", "ctr", "purchases", "revenue"]
            )
            for w in self.windows:
                out.writerow(
                    [
                        w.index,
                        w.slates,
                        w.impressions,
                        w.clicks,
                        f"{w.ctr:.5f}",
                        w.purchases,
                        f"{w.revenue:.2f}",
                    ]
                )


def plot(curves: dict[str, list[Window]], path: Path) -> None:
    """A PNG of CTR per window for each policy."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for name, windows in curves.items():
        axes.plot([w.index for w in windows], [w.ctr for w in windows], marker="o", label=name)
    axes.set_xlabel("window")
    axes.set_ylabel("click-through rate per impression")
    axes.set_title("slatebandit simulator: learning curve")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def windows_of(total: int, size: int) -> Iterator[int]:
    while total > 0:
        yield min(size, total)
        total -= size
