"""The in-memory catalog the request path reads: one numpy column per attribute, indexed by key.

It mirrors the ``items`` table (the source of truth) and is updated from its change feed. Only
what serving needs lives here: ids, category and brand codes, prices, availability, the current
revision, the features the scorer reads, impression counts and a time-decayed popularity.

Opened on the machine's snapshot (``from_snapshot``), the columns that mirror the table are
memory-mapped from its files and shared by every worker (numeric columns copy-on-write, strings
and the id lookup as blobs with a per-worker overlay: ``retrieval.columns``); the columns that
are this worker's own (impressions, popularity, the fresh pool) stay in private memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from slatebandit.retrieval.columns import IdColumn, KeyLookup, StringColumn
from slatebandit.retrieval.content import item_tokens, scorer_features

if TYPE_CHECKING:
    from slatebandit.retrieval.snapshot import Snapshot

POPULARITY_HALF_LIFE = 86_400.0  # seconds; a day-old interaction counts half
FRESH_POOL_LIMIT = 20_000  # newest rarely-shown items kept as explore candidates
CONTEXT_ITEMS = 500  # items kept per context token
CONTEXTS = 2_000  # context tokens tracked


def popularity_band(codes: Any) -> Any:
    """The popularity band of packed dynamic codes (``Catalog.dynamic_codes``): an int or an
    array of them."""
    return codes >> 4


def age_band(codes: Any) -> Any:
    """The age band of packed dynamic codes (``Catalog.dynamic_codes``)."""
    return codes & 15


class Catalog:
    def __init__(self, fresh_impressions: int = 50) -> None:
        self.fresh_impressions = fresh_impressions
        self.item_ids = IdColumn()
        self.key_of = KeyLookup(self.item_ids)
        self.titles = StringColumn()  # for explanations ("similar to Blue Linen Shirt ...")
        # The scorer's item features per key: an id token, then the content tokens, e.g.
        # "k42 c=men c=men/shoes b=acme p=6 a=color=red".
        self.features = StringColumn()
        self.category_codes: dict[str, int] = {"": 0}
        self.category_names: list[str] = [""]
        self.category = np.zeros(0, dtype=np.int32)
        self.brand_codes: dict[str, int] = {"": 0}
        self.brand_names: list[str] = [""]
        self.brand = np.zeros(0, dtype=np.int32)
        self.price = np.zeros(0, dtype=np.float32)  # NaN: no price
        self.version = 0  # bumped by ItemStore after each change: what was built on it is stale
        self.available = np.zeros(0, dtype=bool)
        self.rev = np.zeros(0, dtype=np.int64)
        self.impressions = np.zeros(0, dtype=np.int32)
        self.popularity = np.zeros(0, dtype=np.float64)
        self.created = np.zeros(0, dtype=np.float64)  # when each item entered the catalog
        self.fresh: dict[int, None] = {}  # insertion-ordered set: newest last
        self.popular = np.zeros(0, dtype=np.int64)  # cached ranking, see refresh_popular
        # Interactions per context token ("device=mobile", "hour=b20", ...): what shoppers in
        # that context engage with. Pruned to the best CONTEXT_ITEMS per token on refresh.
        self.context_popularity: dict[str, dict[int, float]] = {}
        # Each context's ranking, computed once until the next interaction or refresh: summing
        # and sorting up to CONTEXT_ITEMS per token on every slate took a growing share of the
        # soak's CPU while the tokens filled up.
        self._context_rankings: dict[tuple[str, ...], np.ndarray] = {}
        self._pop_origin = time.time()

    def __len__(self) -> int:
        return int(np.count_nonzero(self.available))

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, fresh_impressions: int = 50) -> Catalog:
        """The catalog as of ``snapshot.rev``, mapped from its files (apply later changes)."""
        self = cls(fresh_impressions)
        self._adopt_base(snapshot)
        size = snapshot.capacity
        self.impressions = np.zeros(size, dtype=np.int32)
        self.popularity = np.zeros(size, dtype=np.float64)
        # The fresh pool as a feed replayed from the start leaves it: the newest items last.
        live = np.flatnonzero(self.available)
        newest = live[np.argsort(self.rev[live], kind="stable")][-FRESH_POOL_LIMIT:]
        self.fresh = dict.fromkeys(newest.tolist())
        return self

    def rebase(self, other: Catalog) -> None:
        """Serve ``other``'s mirror of the table (a newer snapshot, caught up to this catalog's
        changes), keeping this worker's own columns (impressions, popularity, fresh pool).
        Call on the event loop: codes and their names must change together for requests."""
        for name in _MIRRORED:
            setattr(self, name, getattr(other, name))
        self._grow_own(len(self.item_ids))
        self.version += 1

    def _adopt_base(self, snapshot: Snapshot) -> None:
        size = snapshot.capacity
        self.item_ids = IdColumn(*snapshot.strings["item_ids"], size=size)
        self.titles = StringColumn(*snapshot.strings["titles"], size=size)
        self.features = StringColumn(*snapshot.strings["features"], size=size)
        self.key_of = KeyLookup(self.item_ids, snapshot.id_hashes, snapshot.id_keys)
        self.category_names = list(snapshot.category_names)
        self.category_codes = {name: code for code, name in enumerate(self.category_names)}
        self.brand_names = list(snapshot.brand_names)
        self.brand_codes = {name: code for code, name in enumerate(self.brand_names)}
        for name, column in snapshot.columns.items():
            setattr(self, name, column)

    def apply(self, rows: Iterable[Any]) -> tuple[list[tuple[int, list[str], str]], list[int]]:
        """Apply rows of the ``items`` change feed.

        Returns what the index must do: ``(key, tokens, title)`` to (re)embed, and keys to
        delete. Rows older than what this catalog already holds are ignored, so replaying a feed
        is harmless.
        """
        embed: list[tuple[int, list[str], str]] = []
        deleted: list[int] = []
        for row in rows:
            key = row.key
            self._reserve(key + 1)
            if self.rev[key] >= row.rev:
                continue
            self.rev[key] = row.rev
            if row.deleted:
                self.available[key] = False
                self.fresh.pop(key, None)
                deleted.append(key)
                continue
            tokens = item_tokens(row.category, row.brand, row.price, row.attributes)
            if self.item_ids[key] is None:
                self.item_ids[key] = row.item_id
                self.created[key] = row.created_at
                self.key_of[row.item_id] = key
                if self.impressions[key] < self.fresh_impressions:
                    self._add_fresh(key)
            self.features[key] = scorer_features(key, tokens)
            self.titles[key] = row.title
            self.category[key] = _code(self.category_codes, self.category_names, row.category)
            self.brand[key] = _code(self.brand_codes, self.brand_names, row.brand)
            self.price[key] = np.nan if row.price is None else row.price
            self.available[key] = bool(row.available)
            if row.available:
                embed.append((key, tokens, row.title))
            else:  # out of stock: out of the index too, so neighbour lists stay full
                deleted.append(key)
        return embed, deleted

    def live_key(self, item_id: str) -> int | None:
        key = self.key_of.get(item_id)
        return key if key is not None and self.available[key] else None

    def add_impressions(self, key: int, n: int = 1) -> None:
        self.impressions[key] += n
        if self.impressions[key] >= self.fresh_impressions:
            self.fresh.pop(key, None)

    def fresh_keys(self, limit: int, allowed: np.ndarray | None = None) -> list[int]:
        """The newest available items still shown fewer than ``fresh_impressions`` times
        (and in ``allowed``, a mask over keys, if given)."""
        usable = self.available if allowed is None else allowed
        out = []
        for key in reversed(self.fresh):
            if key < len(usable) and usable[key]:
                out.append(key)
                if len(out) == limit:
                    break
        return out

    def bump_popularity(self, key: int, weight: float, now: float | None = None) -> None:
        # Exponential decay without touching every item: new weight grows with time instead,
        # and the whole column is rescaled once the growth factor gets large.
        now = time.time() if now is None else now
        exponent = (now - self._pop_origin) / POPULARITY_HALF_LIFE
        if exponent > 50:
            self.popularity *= 2.0**-exponent
            self._pop_origin, exponent = now, 0.0
        self.popularity[key] += weight * 2.0**exponent

    def dynamic_codes(self, keys: np.ndarray, now: float) -> np.ndarray:
        """Popularity and age bands of ``keys`` at ``now``, packed as ``pop << 4 | age``.

        Popularity band: log2(1 + decayed interactions); age band: log2(1 + days in the
        catalog); both capped at 15. The scorer sees them as features and the decision log
        keeps the byte, so the learner and replay see exactly what the scorer saw.
        """
        decayed = self.popularity[keys] * np.exp2(-(now - self._pop_origin) / POPULARITY_HALF_LIFE)
        days = np.maximum(now - self.created[keys], 0.0) / 86_400.0
        # Rounded first, so a count does not slip under a band edge by seconds of decay.
        pop = np.minimum(np.log2(1.0 + np.round(decayed, 1)), 15).astype(np.uint8)
        age = np.minimum(np.log2(1.0 + days), 15).astype(np.uint8)
        return (pop << 4) | age

    def refresh_popular(self, limit: int = 1000) -> None:
        """Recompute the cached ranking; off the request path (it scans every item)."""
        self.popular = self.top_popular(limit)
        self._context_rankings = {}
        for token, scores in list(self.context_popularity.items()):
            if len(scores) > 2 * CONTEXT_ITEMS:
                best = sorted(scores, key=scores.__getitem__, reverse=True)[:CONTEXT_ITEMS]
                self.context_popularity[token] = {key: scores[key] for key in best}

    def bump_context(self, tokens: Iterable[str], key: int, weight: float) -> None:
        self._context_rankings.clear()  # the next slate in any context sees the click
        for token in tokens:
            if token not in self.context_popularity and len(self.context_popularity) >= CONTEXTS:
                continue  # a bounded number of contexts; the first seen are kept
            scores = self.context_popularity.setdefault(token, {})
            scores[key] = scores.get(key, 0.0) + weight

    def context_popular(self, tokens: Iterable[str], limit: int) -> np.ndarray:
        """Available items most engaged with in this context (summed over its tokens);
        availability is as of now (a removed item never comes back from a cached ranking)."""
        key = tuple(tokens)
        ranked = self._context_rankings.get(key)
        if ranked is None:
            ranked = self._context_ranking(key)
            if len(self._context_rankings) < CONTEXTS:
                self._context_rankings[key] = ranked
        return ranked[self.available[ranked]][:limit] if len(ranked) else ranked

    def _context_ranking(self, tokens: tuple[str, ...]) -> np.ndarray:
        total: dict[int, float] = {}
        for token in tokens:
            for key, score in self.context_popularity.get(token, {}).items():
                total[key] = total.get(key, 0.0) + score
        ranked = sorted(total, key=lambda key: (-total[key], -key))
        return np.asarray([k for k in ranked if k < len(self.available)], dtype=np.int64)

    def top_popular(self, limit: int) -> np.ndarray:
        """Keys of the most popular available items, best first (ties: newest first)."""
        limit = min(limit, int(np.count_nonzero(self.available)))
        if limit == 0:
            return np.empty(0, dtype=np.int64)
        # A vanishing bonus per key breaks ties towards newer items, without a full sort.
        tiebreak = np.arange(len(self.popularity)) * 1e-12
        score = np.where(self.available, self.popularity + tiebreak, -1.0)
        top = np.argpartition(-score, limit - 1)[:limit]
        return top[np.argsort(-score[top])].astype(np.int64)

    def _add_fresh(self, key: int) -> None:
        self.fresh[key] = None
        if len(self.fresh) > FRESH_POOL_LIMIT:
            del self.fresh[next(iter(self.fresh))]

    def _reserve(self, size: int) -> None:
        if size <= len(self.item_ids):
            return
        size = max(size, int(len(self.item_ids) * 1.5) + 16)
        for strings in (self.item_ids, self.features, self.titles):
            strings.grow(size)
        for name in ("category", "brand", "price", "available", "rev", "created"):
            setattr(self, name, _grown(getattr(self, name), size))
        self._grow_own(size)

    def _grow_own(self, size: int) -> None:
        self.impressions = _grown(self.impressions, size)
        self.popularity = _grown(self.popularity, size)


# What mirrors the items table (a snapshot replaces them); the rest is the worker's own.
_MIRRORED = (
    "item_ids",
    "key_of",
    "titles",
    "features",
    "category_codes",
    "category_names",
    "category",
    "brand_codes",
    "brand_names",
    "brand",
    "price",
    "available",
    "rev",
    "created",
)


def _grown(column: np.ndarray, size: int) -> np.ndarray:
    """``column`` with room for ``size`` rows (itself if it has it); new rows are zero."""
    if len(column) >= size:
        return column
    new = np.zeros(size, dtype=column.dtype)
    new[: len(column)] = column
    return new


def _code(codes: dict[str, int], names: list[str], name: str) -> int:
    code = codes.get(name)
    if code is None:
        code = codes[name] = len(names)
        names.append(name)
    return code
