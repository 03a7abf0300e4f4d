"""A storefront with a hidden click model: shoppers with tastes, items with appeal, position bias.

The model is seeded and known only to the simulator. A shopper clicks item i in slot j with
probability

    p = min(0.9, base * taste[user, category(i)] * appeal(i) * position_bias[j])

where each shopper's tastes over categories are drawn from a Dirichlet (most shoppers care for
two or three categories), an item's appeal from a log-normal, and the position bias decays with
the slot. A policy that learns who likes what beats one that shows the same items to everyone.

A click leads to a purchase with probability

    q = min(0.9, BUY_RATE * sqrt(median price / price))

so a dear item sells less often but earns more per click (price * q grows as sqrt(price)): a
policy that maximises revenue should show dearer items than one that maximises clicks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from slatebandit.items import Item

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
BUY_RATE = 0.25  # a click's chance to end in a purchase, at the median price
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

    @cached_property
    def prices(self) -> dict[str, float]:
        return {item.item_id: float(item.price or 0.0) for item in self.items}

    @cached_property
    def median_price(self) -> float:
        return float(np.median(list(self.prices.values())))

    def purchase_probability(self, item_id: str) -> float:
        """A click's chance to end in a purchase: lower for dearer items (module docstring)."""
        return min(0.9, BUY_RATE * (self.median_price / self.prices[item_id]) ** 0.5)

    def click_probability(self, user: int, item_id: str, slot: int) -> float:
        taste = self.tastes[user, self.category_of[item_id]]
        return min(0.9, self.base * taste * self.appeal[item_id] * self.position_bias[slot])

    def with_new_tastes(self, seed: int) -> Storefront:
        """The same catalog, with every shopper's tastes drawn anew (a change of season)."""
        rng = np.random.default_rng(seed)
        tastes = rng.dirichlet(np.full(self.tastes.shape[1], 0.3), size=self.tastes.shape[0])
        return replace(self, tastes=tastes)

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """Each shopper's base * taste * appeal for every item (users x items), and the items'
        categories."""
        categories = np.array([self.category_of[item.item_id] for item in self.items])
        appeal = np.array([self.appeal[item.item_id] for item in self.items])
        return self.base * self.tastes[:, categories] * appeal, categories

    def oracle_ctr(self, k: int) -> float:
        """The CTR of showing each shopper their k best items, best first (no layout)."""
        return self.layout_ceiling(k, explore_slots=(), diverse_slots=())

    def layout_ceiling(
        self,
        k: int,
        explore_slots: tuple[int, ...],
        diverse_slots: tuple[int, ...],
        epsilon: float = 0.0,
    ) -> float:
        """The best CTR a policy can reach with slatebandit's slot layout, knowing every
        shopper's tastes: exploit slots take the best remaining item (with probability
        ``epsilon`` a uniformly random one instead), a diverse slot the best remaining item of
        a category not yet in the slate, an explore slot a uniformly random remaining item.

        Random items are counted at the catalog's mean value for the shopper; within a
        slate's few slots the items already taken barely move that mean."""
        values, categories = self.values()
        total = 0.0
        for user_values in values:
            order = np.argsort(-user_values)
            mean = float(user_values.mean())
            taken: set[int] = set()
            shown: set[int] = set()
            clicks = 0.0
            for slot in range(k):
                bias = float(self.position_bias[slot])
                if slot in explore_slots:
                    clicks += min(0.9, mean * bias)
                    continue
                allowed = (
                    (i for i in order if i not in taken and categories[i] not in shown)
                    if slot in diverse_slots
                    else (i for i in order if i not in taken)
                )
                best = next(allowed, None)
                if best is None:  # every category shown: the best remaining item
                    best = next(i for i in order if i not in taken)
                p = min(0.9, float(user_values[best]) * bias)
                if slot not in diverse_slots and epsilon:
                    p = (1 - epsilon) * p + epsilon * min(0.9, mean * bias)
                clicks += p
                taken.add(int(best))
                shown.add(int(categories[best]))
            total += clicks / k
        return total / len(values)

    def random_ctr(self, k: int) -> float:
        """The CTR of k uniformly random items."""
        values, _ = self.values()
        bias = self.position_bias[:k]
        return float(np.minimum(0.9, values.mean(1)[:, None] * bias).mean())
