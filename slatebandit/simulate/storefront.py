"""A storefront with a hidden click model: shoppers with tastes, items with appeal, position bias.

The model is seeded and known only to the simulator. A shopper clicks item i in slot j with
probability

    p = min(0.9, base * taste[user, category(i)] * appeal(i) * position_bias[j])

where each shopper's tastes over categories are drawn from a Dirichlet (most shoppers care for
two or three categories), an item's appeal from a log-normal, and the position bias decays with
the slot. A policy that learns who likes what beats one that shows the same items to everyone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slatebandit.logging import Item

CATEGORIES = (
    "women/dresses",
    "women/shoes",
    "men/shirts",
    "men/shoes",
    "kids/toys",
    "home/kitchen",
    "home/decor",
    "sport/running",
)
BRANDS = ("Nova", "Arto", "Lumo", "Pell", "Quin", "Rave")
DEVICES = ("mobile", "desktop", "tablet")


@dataclass(frozen=True)
class Storefront:
    items: list[Item]
    category_of: dict[str, int]  # item id -> category index
    appeal: dict[str, float]
    tastes: np.ndarray  # users x categories
    position_bias: np.ndarray
    base: float

    @classmethod
    def generate(cls, n_items: int, n_users: int, seed: int, base: float = 0.6) -> Storefront:
        rng = np.random.default_rng(seed)
        items, category_of, appeal = [], {}, {}
        for i in range(n_items):
            c = int(rng.integers(len(CATEGORIES)))
            brand = BRANDS[int(rng.integers(len(BRANDS)))]
            item_id = f"sim-{i:06d}"
            items.append(
                Item(
                    item_id=item_id,
                    title=f"{brand} {CATEGORIES[c].rsplit('/', 1)[-1]} {i}",
                    category=CATEGORIES[c],
                    brand=brand,
                    price=round(float(rng.lognormal(3.5, 0.5)), 2),
                )
            )
            category_of[item_id] = c
            appeal[item_id] = float(rng.lognormal(0.0, 0.3))
        tastes = rng.dirichlet(np.full(len(CATEGORIES), 0.3), size=n_users)
        bias = 1.0 / (1.0 + np.arange(50)) ** 0.5
        return cls(items, category_of, appeal, tastes, bias, base)

    def click_probability(self, user: int, item_id: str, slot: int) -> float:
        taste = self.tastes[user, self.category_of[item_id]]
        return min(0.9, self.base * taste * self.appeal[item_id] * self.position_bias[slot])
