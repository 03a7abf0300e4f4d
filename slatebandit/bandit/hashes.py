"""VW's hashes of our features, computed once: of each token, and of each catalog item.

A hash depends on the token, its namespace and VW's hashing options (seed, mode, and the bits
it is masked to), not on a model's weights, so one ``TokenHashes`` serves every model version
of a process (``for_options``). It hashes with VW's own ``hash_feature``, on a small workspace
of its own, so that no model outlives its version for the table's sake.

An item's static features (``Catalog.features``) change only with its revision, so their
hashes are kept by item key (``ItemTable``): a slate's 200 candidates are then a few numpy
gathers, not 200 strings read and looked up.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pylibvw
import vowpalwabbit

from slatebandit.bandit.features import BAND_TOKENS, static_features
from slatebandit.memory import FirstInFirstOut

SHARED, STATIC, BANDS = "uc", "i", "d"  # where each namespace of features.py lives
NAMESPACES = SHARED + STATIC + BANDS


class Items(Protocol):
    """What ``ItemTable`` reads of a catalog (``retrieval.Catalog`` has both)."""

    features: Any  # each key's static features, "k42 c=men c=men/shoes b=acme ...": a list,
    # or a column with ``take`` (``retrieval.columns``)
    rev: np.ndarray  # each key's revision: its features change only with it


class TokenHashes:
    """VW's hash of each token, by namespace, remembered; and the item tables built on them."""

    TOKENS = 50_000  # per namespace (item ids among them, about 5 MB); the oldest go first

    def __init__(self, seed: int, mode: str, bits: int) -> None:
        self._workspace = vowpalwabbit.Workspace(
            f"--quiet --sgd -b {bits} --hash_seed {seed} --hash {mode}"
        )
        self._spaces = {ns: pylibvw.vw.hash_space(self._workspace, ns) for ns in NAMESPACES}
        self._tokens: dict[str, FirstInFirstOut[str, int]] = {
            ns: FirstInFirstOut(self.TOKENS) for ns in NAMESPACES
        }
        self._catalogs: weakref.WeakKeyDictionary[Items, ItemTable] = weakref.WeakKeyDictionary()
        self.bands = np.array(
            [[self.hash(BANDS, name) for name in tokens] for tokens in BAND_TOKENS],
            dtype=np.uint32,
        )  # (256, 2): the popularity and age band of each packed byte

    def hash(self, namespace: str, name: str) -> int:
        # A read of the workspace's hashing options, under the GIL like every pybind11 call.
        return int(pylibvw.vw.hash_feature(self._workspace, name, self._spaces[namespace]))

    def token(self, namespace: str, name: str) -> int:
        tokens = self._tokens[namespace]
        found = tokens.get(name)
        if found is None:
            found = tokens.keep(name, self.hash(namespace, name))
        return found

    def statics(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The hashes of items' static features (all indicators of namespace i): flat, and
        how many each item has."""
        hashes = [[self.token(STATIC, name) for name in text.split()] for text in texts]
        counts = np.fromiter(map(len, hashes), dtype=np.int64, count=len(hashes))
        flat = itertools.chain.from_iterable(hashes)
        return np.fromiter(flat, dtype=np.uint32, count=int(counts.sum())), counts

    def table(self, catalog: Items) -> ItemTable:
        """The item table of ``catalog`` (one per catalog object, dropped with it)."""
        table = self._catalogs.get(catalog)
        if table is None:
            table = self._catalogs[catalog] = ItemTable(self)
        return table

    _shared: dict[tuple[int, str, int], TokenHashes] = {}

    @classmethod
    def for_options(cls, seed: int, mode: str, bits: int) -> TokenHashes:
        key = (seed, mode, bits)
        hashes = cls._shared.get(key)
        if hashes is None:
            hashes = cls._shared[key] = cls(seed, mode, bits)
        return hashes


class ItemTable:
    """Each item's static-feature hashes by item key, as of the revision they were hashed at.

    One flat uint32 pool, and each key's start and count in it. An item is hashed the first
    time it is a candidate, and again when its revision changes; its old hashes stay in the
    pool until the pool is full, when the live ones are packed into a new pool half as large
    again as what they need. So memory is at most about 1.5x the hashes of the items that have
    been candidates (about 9 an item, 4 bytes each), plus 21 bytes a key. Not thread-safe: a
    worker scores on its event loop.
    """

    def __init__(self, hashes: TokenHashes) -> None:
        self.hashes = hashes
        self.rev = np.zeros(0, dtype=np.int64)
        self.start = np.zeros(0, dtype=np.int64)
        self.count = np.zeros(0, dtype=np.int32)
        self.hashed = np.zeros(0, dtype=bool)
        self.pool = np.zeros(4096, dtype=np.uint32)
        self.used = 0

    def lookup(self, catalog: Items, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The hashes of items ``keys``' static features, flat, and how many each has."""
        if len(catalog.rev) > len(self.rev):
            self._grow(len(catalog.rev))
        rev = catalog.rev[keys]
        stale = ~self.hashed[keys] | (self.rev[keys] != rev)
        if stale.any():
            self._hash(catalog, np.unique(keys[stale]))
        counts = self.count[keys]
        return self.pool[_spans(self.start[keys], counts)], counts

    def _hash(self, catalog: Items, keys: np.ndarray) -> None:
        flat, counts = self.hashes.statics(static_features(catalog.features, keys.tolist()))
        if self.used + len(flat) > len(self.pool):
            self._repack(len(flat))
        self.pool[self.used : self.used + len(flat)] = flat
        self.start[keys] = self.used + np.cumsum(counts) - counts
        self.count[keys] = counts
        self.rev[keys] = catalog.rev[keys]
        self.hashed[keys] = True
        self.used += len(flat)

    def _repack(self, room: int) -> None:
        """A new pool with the live hashes packed at its start and room for ``room`` more."""
        keys = np.flatnonzero(self.hashed)
        live = self.pool[_spans(self.start[keys], self.count[keys])]
        pool = np.zeros(max(4096, (len(live) + room) * 3 // 2), dtype=np.uint32)
        pool[: len(live)] = live
        counts = self.count[keys]
        self.start[keys] = np.cumsum(counts) - counts
        self.pool, self.used = pool, len(live)

    def _grow(self, size: int) -> None:
        more = size - len(self.rev)
        self.rev = np.concatenate([self.rev, np.zeros(more, dtype=np.int64)])
        self.start = np.concatenate([self.start, np.zeros(more, dtype=np.int64)])
        self.count = np.concatenate([self.count, np.zeros(more, dtype=np.int32)])
        self.hashed = np.concatenate([self.hashed, np.zeros(more, dtype=bool)])


def _spans(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The positions start, start + 1, ..., start + count - 1 of each span, in order."""
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    return np.arange(total) + np.repeat(starts - ends + counts, counts)
