"""Per-request business filters, applied inside the candidate stage so the slate stays full.

``Filters`` narrows the catalog to the items a slate may hold: category path prefixes ("men"
matches "men" and "men/shoes", not "menswear"), brands, a price range (items without a price
fail any bound) and exact attribute values. Its mask over every item is computed once per
distinct filter and catalog version and cached. Generators then propose from inside the mask:
similar and session neighbours come from an exact search over the allowed items when there
are few of them (``EXACT_LIMIT``) and from an over-fetching HNSW query otherwise; popular and
fresh proposals are drawn from the allowed items only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from slatebandit.memory import Held, held
from slatebandit.retrieval.catalog import Catalog
from slatebandit.retrieval.content import clean
from slatebandit.retrieval.index import ItemIndex
from slatebandit.retrieval.shared_index import SharedIndex

EXACT_LIMIT = 20_000  # allowed items up to which neighbours are searched exactly
MAX_OVERFETCH = 10  # an HNSW query asks for at most this many times what it needs
CACHE_SIZE = 32  # distinct filters whose masks are kept (1 byte per item each)


@dataclass(frozen=True)
class Filters:
    categories: tuple[str, ...] = ()
    brands: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None
    attributes: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.categories
            or self.brands
            or self.attributes
            or self.price_min is not None
            or self.price_max is not None
        )

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Filters:
        """From the API's ``filters`` shape: ``{category, brand, price_min, price_max,
        attributes}``, already validated."""
        return cls(
            categories=tuple(body.get("category", ())),
            brands=tuple(body.get("brand", ())),
            price_min=body.get("price_min"),
            price_max=body.get("price_max"),
            attributes=tuple(sorted((k, str(v)) for k, v in body.get("attributes", {}).items())),
        )

    def mask(self, catalog: Catalog) -> np.ndarray:
        """Which item keys pass (availability is not this mask's business)."""
        n = len(catalog.category)
        ok = np.ones(n, dtype=bool)
        if self.categories:
            prefixes = [clean(c).strip("/") for c in self.categories]
            codes = np.array(
                [_under(clean(name), prefixes) for name in catalog.category_names], dtype=bool
            )
            ok &= codes[catalog.category]
        if self.brands:
            wanted = {clean(b) for b in self.brands}
            codes = np.array([clean(name) in wanted for name in catalog.brand_names], dtype=bool)
            ok &= codes[catalog.brand]
        with np.errstate(invalid="ignore"):  # NaN prices fail every bound
            if self.price_min is not None:
                ok &= catalog.price[:n] >= self.price_min
            if self.price_max is not None:
                ok &= catalog.price[:n] <= self.price_max
        if self.attributes:
            tokens = [f"a={clean(k)}={clean(v)}" for k, v in self.attributes]
            for key in np.flatnonzero(ok):
                words = catalog.features[key].split()
                ok[key] = all(t in words for t in tokens)
        return ok


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + "/") for p in prefixes)


@dataclass(frozen=True)
class Allowed:
    """The items one filter allows, with what the generators need to search inside them."""

    mask: np.ndarray  # over keys: available and passing the filter
    count: int
    keys: np.ndarray | None  # the allowed keys, when few enough for an exact search
    vectors: np.ndarray | None  # their embeddings, row for row

    def neighbours(self, index: ItemIndex | SharedIndex, queries: np.ndarray, k: int) -> np.ndarray:
        """Up to ``k`` allowed neighbours per query row, best first (-1 pads)."""
        queries = np.atleast_2d(queries).astype(np.float32, copy=False)
        if self.keys is not None and self.vectors is not None:
            if self.count == 0:
                return np.full((len(queries), 0), -1, dtype=np.int64)
            scores = queries @ self.vectors.T
            k = min(k, self.count)
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
            return self.keys[np.take_along_axis(top, order, axis=1)]
        live = max(len(index), 1)
        factor = int(min(MAX_OVERFETCH, np.ceil(live / max(self.count, 1))))
        labels, _ = index.query(queries, k * factor)
        inside = self.mask[np.clip(labels, 0, len(self.mask) - 1)] & (labels < len(self.mask))
        # Keep each row's allowed labels in order, padded with -1 (dropped by the merge).
        out = np.full((len(labels), k), -1, dtype=np.int64)
        for row in range(len(labels)):
            kept = labels[row][inside[row]][:k]
            out[row, : len(kept)] = kept
        return out

    def popular(self, catalog: Catalog, n: int) -> np.ndarray:
        """The ``n`` most popular allowed items, best first."""
        ranked = catalog.popular[catalog.popular < len(self.mask)]
        ranked = ranked[self.mask[ranked]]
        if len(ranked) >= n or len(catalog.popular) >= self.count:
            return np.asarray(ranked[:n], dtype=np.int64)
        keys = np.flatnonzero(self.mask)
        score = catalog.popularity[keys]
        n = min(n, len(keys))
        top = np.argpartition(-score, n - 1)[:n] if n else np.empty(0, dtype=np.int64)
        return keys[top[np.argsort(-score[top], kind="stable")]].astype(np.int64)


class FilterMasks:
    """An LRU of filter masks, keyed by the filter and the catalog version it was built on."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._masks: OrderedDict[tuple[Filters, int], Allowed] = OrderedDict()
        self._lock = threading.Lock()

    def memory(self) -> Held:
        with self._lock:
            return held(self._masks)

    def cached(self, filters: Filters, catalog: Catalog) -> Allowed | None:
        tag = (filters, catalog.version)
        with self._lock:
            found = self._masks.get(tag)
            if found is not None:
                self._masks.move_to_end(tag)
            return found

    def allowed(
        self, filters: Filters, catalog: Catalog, index: ItemIndex | SharedIndex
    ) -> Allowed:
        """Available items that pass ``filters``."""
        tag = (filters, catalog.version)
        found = self.cached(filters, catalog)
        if found is not None:
            return found
        mask = filters.mask(catalog) & catalog.available[: len(catalog.category)]
        count = int(np.count_nonzero(mask))
        keys = vectors = None
        if count <= EXACT_LIMIT:
            keys, vectors = index.live_vectors(np.flatnonzero(mask))
            count = len(keys)
        allowed = Allowed(mask, count, keys, vectors)
        with self._lock:
            self._masks[tag] = allowed
            while len(self._masks) > self.size:
                self._masks.popitem(last=False)
        return allowed
