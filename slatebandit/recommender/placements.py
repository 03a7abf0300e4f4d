"""Placements: where on the storefront a slate is shown, and what that changes.

    home      the shopper's slate: the generators' mix (``retrieval.candidates``)
    item      an item page (``item_id``): the anchor's nearest neighbours lead the candidates
    cart      a cart (``items``): what shoppers carted or bought with these items lead
              (``retrieval.together``), then the neighbours of the cart's items
    category  a category page (``category``, a path prefix: "men" is "men" and "men/shoes"):
              the request's filters narrowed to the prefix, so every generator proposes inside

An item page's anchor and a cart's items are what the shopper is looking at: they are never
shown, they seed the similar and session generators like session items, and their categories
reach the scorer first among the shopper's recent ones. A placement's own proposals (its
*lead*, credited to the similar generator) come before every generator's, and the usual mix
fills the rest, so exploration keeps fresh items to try. With an untrained model, which ties
every score, the slate follows that order. An item page's item that is out of stock or
removed has no neighbours in the index: its page gets the usual mix (without it).

The scorer sees the placement as the context feature ``placement`` (the server's: it replaces
a request context's own), and each decision records it in ``decisions.placement``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from slatebandit.errors import InvalidInput
from slatebandit.merchandising import PLACEMENTS  # home, item, cart, category: rules name them too
from slatebandit.retrieval import Allowed, Filters, ItemStore
from slatebandit.retrieval.catalog import Catalog
from slatebandit.retrieval.content import clean
from slatebandit.retrieval.together import Together

FEATURE = "placement"  # its name among the context features
LEAD = 100  # at most this many of a placement's own proposals lead the candidates
NEIGHBOURS = 21  # per cart item, itself among them: as many as the similar generator asks
CART_SEEDS = 5  # cart items whose neighbours follow its bought-together items
# The field each placement needs; no other placement takes it.
FIELDS = {"item": "item_id", "cart": "items", "category": "category"}


@dataclass(frozen=True)
class Placement:
    """A request's placement, checked against the catalog."""

    name: str = "home"
    seeds: tuple[int, ...] = ()  # the anchor or the cart's items (item keys)
    category: str | None = None  # the category page's prefix, cleaned as filters clean it

    def filters(self, requested: Filters | None) -> Filters | None:
        """The request's filters, narrowed to the category page's prefix."""
        if self.category is None:
            return requested
        if requested is None or not requested.categories:
            return dataclasses.replace(requested or Filters(), categories=(self.category,))
        return dataclasses.replace(requested, categories=_inside(requested, self.category))

    def lead(
        self, store: ItemStore, together: Together, allowed: Allowed | None, depth: int = 0
    ) -> np.ndarray:
        """The placement's own proposals, best first (unfiltered: the merge filters them).
        ``depth``: items earlier pages showed; a later page reaches that much further."""
        n = LEAD + depth
        if self.name == "item":
            return _neighbours(store, self.seeds, n + 1, allowed)  # +1: the anchor
        if self.name == "cart":
            bought = np.asarray(together.of(self.seeds, n), dtype=np.int64)
            near = _neighbours(store, self.seeds[:CART_SEEDS], NEIGHBOURS + depth, allowed)
            return np.concatenate([bought, near])[:n]
        return np.empty(0, dtype=np.int64)


def placement_of(
    catalog: Catalog,
    name: str,
    item_id: str | None,
    cart: Sequence[str],
    category: str | None,
    filters: Filters | None,
) -> Placement:
    """The request's placement; a 400 naming the field if one is missing, unknown or given
    to a placement that does not take it."""
    if name not in PLACEMENTS:
        raise InvalidInput(f"placement: must be one of {', '.join(PLACEMENTS)}", field="placement")
    given = {"item_id": item_id is not None, "items": bool(cart), "category": category is not None}
    for owner, field in FIELDS.items():
        if given[field] and name != owner:
            raise InvalidInput(f"{field}: only with placement {owner}", field=field)
        if not given[field] and name == owner:
            raise InvalidInput(f"{field}: required with placement {owner}", field=field)
    if name == "item":
        return Placement(name, (_known(catalog, str(item_id), "item_id"),))
    if name == "cart":
        keys = [_known(catalog, item, f"items[{i}]") for i, item in enumerate(cart)]
        return Placement(name, tuple(dict.fromkeys(keys)))
    if name == "category":
        prefix = clean(str(category)).strip("/")
        if not prefix:
            raise InvalidInput("category: must name a category path", field="category")
        placement = Placement(name, category=prefix)
        placement.filters(filters)  # a 400 now if the request's filters leave nothing
        return placement
    return Placement(name)


def _known(catalog: Catalog, item_id: str, field: str) -> int:
    key = catalog.key_of.get(item_id)
    if key is None:
        raise InvalidInput(f"{field}: no item {item_id!r}", field=field)
    return key


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _inside(requested: Filters, prefix: str) -> tuple[str, ...]:
    """The request's category prefixes, narrowed to ``prefix``: an item under ``prefix`` and
    under one of them is under the longer of the two, since both are prefixes of its path."""
    narrowed = []
    for wanted in (clean(c).strip("/") for c in requested.categories):
        if _under(wanted, prefix):
            narrowed.append(wanted)
        elif _under(prefix, wanted):
            narrowed.append(prefix)
    if not narrowed:
        raise InvalidInput(
            f"filters.category: none of these is inside the category {prefix!r}",
            field="filters.category",
        )
    return tuple(dict.fromkeys(narrowed))


def _neighbours(
    store: ItemStore, seeds: Sequence[int], k: int, allowed: Allowed | None
) -> np.ndarray:
    """Up to ``k`` nearest neighbours of each live seed (the seed among them), every seed's
    best first, then every seed's second, and so on."""
    index = store.index
    live = [key for key in seeds if index.contains(key)]
    if not live:
        return np.empty(0, dtype=np.int64)
    if allowed is None:
        labels = index.neighbours_of(live, k)  # kept between slates
    else:
        labels = allowed.neighbours(index, index.live_vectors(live)[1], k)
    return np.asarray(labels, dtype=np.int64).T.ravel()
