"""A synthetic, seeded demo catalog: fashion-like items with titles, categories, brands, prices
and attributes, so ``slatebandit serve --demo`` has something to recommend."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from slatebandit.items import Item

DEPARTMENTS = {
    "women": [
        "dresses",
        "tops",
        "jeans",
        "skirts",
        "shoes/heels",
        "shoes/sneakers",
        "bags",
        "coats",
    ],
    "men": ["shirts", "t-shirts", "jeans", "suits", "shoes/boots", "shoes/sneakers", "jackets"],
    "kids": ["t-shirts", "trousers", "shoes", "toys/plush", "toys/blocks"],
    "home": ["bedding", "kitchen", "lighting", "decor"],
    "sport": ["running/shoes", "running/apparel", "yoga", "cycling"],
}
COLORS = ["black", "white", "navy", "red", "green", "beige", "grey", "blue", "pink", "brown"]
MATERIALS = ["cotton", "linen", "wool", "denim", "leather", "polyester", "silk", "cashmere"]
ADJECTIVES = [
    "classic",
    "slim",
    "relaxed",
    "vintage",
    "essential",
    "premium",
    "soft",
    "bold",
    "light",
]
SYLLABLES = ["no", "va", "ri", "ko", "lu", "ta", "mi", "sel", "dor", "ax", "fen", "bru"]


def demo_items(n: int = 10_000, seed: int = 7) -> Iterator[Item]:
    rng = np.random.default_rng(seed)
    categories = [f"{d}/{c}" for d, cs in DEPARTMENTS.items() for c in cs]
    base_price = {c: float(rng.uniform(15, 150)) for c in categories}
    brands = sorted(
        {"".join(rng.choice(SYLLABLES, size=rng.integers(2, 4))).title() for _ in range(300)}
    )
    for i in range(n):
        category = categories[int(rng.integers(len(categories)))]
        brand = brands[int(rng.integers(len(brands)))]
        color = COLORS[int(rng.integers(len(COLORS)))]
        material = MATERIALS[int(rng.integers(len(MATERIALS)))]
        noun = category.rsplit("/", 1)[-1].rstrip("s").replace("-", " ")
        adjective = ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]
        yield Item(
            item_id=f"sku-{i:07d}",
            title=f"{brand} {adjective} {color} {material} {noun}",
            category=category,
            brand=brand,
            price=round(base_price[category] * float(rng.lognormal(0, 0.4)), 2),
            attributes={"color": color, "material": material},
        )
