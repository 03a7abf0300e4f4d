"""Drive a slatebandit server as a storefront would, and measure click-through per window.

Speaks only HTTP (any httpx-compatible client): uploads the storefront's catalog, asks for a
slate per visit, rolls the hidden click model, and posts each click as a reward and the product
view it leads to as a shopper event. ``random`` and ``popular`` are baselines computed here, on
the same traffic and click model, without asking the server: random shows k random items;
popular shows the k items clicked most so far.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slatebandit.simulate.storefront import DEVICES, Storefront

POLICIES = ("vw", "random", "popular")
VISITS_PER_HOUR = 500


@dataclass
class Window:
    index: int
    slates: int = 0
    impressions: int = 0
    clicks: int = 0

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0


@dataclass
class Simulation:
    client: Any  # an httpx.Client (or Starlette's TestClient) with the server's base URL
    storefront: Storefront
    policy: str = "vw"
    k: int = 5
    seed: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    windows: list[Window] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        self.rng = np.random.default_rng(self.seed)
        self.ids = [item.item_id for item in self.storefront.items]
        self.clicked = dict.fromkeys(self.ids, 0)
        self.visits = 0

    def upload_catalog(self, chunk: int = 1000) -> None:
        for start in range(0, len(self.storefront.items), chunk):
            items = [i.model_dump() for i in self.storefront.items[start : start + chunk]]
            self._ok(self.client.put("/v1/items", json=items, headers=self.headers))

    def run_window(self, visits: int) -> Window:
        window = Window(len(self.windows))
        for _ in range(visits):
            self._visit(window)
        self.windows.append(window)
        return window

    def _visit(self, window: Window) -> None:
        user = int(self.rng.integers(len(self.storefront.tastes)))
        context = {
            "device": DEVICES[int(self.rng.integers(len(DEVICES)))],
            "hour": (self.visits // VISITS_PER_HOUR) % 24,  # the simulated clock, not the wall's
        }
        self.visits += 1
        shown, event_id = self._slate(user, context)
        window.slates += 1
        for slot, item_id in enumerate(shown):
            window.impressions += 1
            if self.rng.random() >= self.storefront.click_probability(user, item_id, slot):
                continue
            window.clicks += 1
            self.clicked[item_id] += 1
            if event_id is not None:
                reward = {"event_id": event_id, "item_id": item_id, "type": "click"}
                self._ok(self.client.post("/v1/rewards", json=reward, headers=self.headers))
                # The click opens the product page: the shopper's view is an event.
                event = {"user_id": f"shopper-{user}", "item_id": item_id, "type": "view"}
                self._ok(self.client.post("/v1/events", json=event, headers=self.headers))

    def _slate(self, user: int, context: dict[str, Any]) -> tuple[list[str], str | None]:
        if self.policy == "random":
            return [
                self.ids[i] for i in self.rng.choice(len(self.ids), self.k, replace=False)
            ], None
        if self.policy == "popular":
            noise = self.rng.random(len(self.ids))  # random order among equally clicked items
            counts = np.fromiter(self.clicked.values(), dtype=float, count=len(self.ids))
            top = np.lexsort((noise, -counts))[: self.k]
            return [self.ids[i] for i in top], None
        request = {"user_id": f"shopper-{user}", "k": self.k, "context": context}
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
            out.writerow(["window", "slates", "impressions", "clicks", "ctr"])
            for w in self.windows:
                out.writerow([w.index, w.slates, w.impressions, w.clicks, f"{w.ctr:.5f}"])


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
