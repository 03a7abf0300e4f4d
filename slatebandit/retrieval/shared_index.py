"""The item index a worker serves on a machine snapshot: the shared base plus its own overlay.

The base is the snapshot's usearch index, memory-mapped read-only from its file: every worker
of the machine reads the same pages, and opening it costs a map, not a load. It never changes.
Catalog changes after the snapshot go to a small per-worker overlay: changed and new items in an
in-memory hnswlib ``ItemIndex``, and a mask of base keys superseded (updated, deleted, out of
stock). A query asks both and merges by similarity; the base is asked for a few more than ``k``
(as many as it has hidden items, at most ``MARGIN``), and again for more if hidden items still
crowd out results, so deletions never shrink what a caller gets. When the overlay outgrows
``overlay_limit`` the store has a new snapshot built (``retrieval.store``).

Same public behaviour as ``ItemIndex``: ``query``, ``neighbours_of``, ``live_vectors``,
``contains``, ``upsert``, ``delete``, ``len``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from slatebandit.retrieval.index import ItemIndex, NeighbourCache
from slatebandit.retrieval.snapshot import Snapshot

MARGIN = 32  # extra base results asked for, first time, when some base items are hidden
RETRIES = 3  # times the base is asked again (each for twice as many) when hidden items crowd


class SharedIndex(NeighbourCache):
    def __init__(self, snapshot: Snapshot, ef: int = 64) -> None:
        self.snapshot = snapshot
        self.dim = snapshot.dim
        self.rev = snapshot.rev
        self.factors_version = snapshot.factors_version
        self._ef = ef
        self._base = snapshot.ann()
        self._base.expansion_search = ef
        self._in_base = snapshot.in_index
        # Zero pages cost nothing until written: a worker pays for the pages it hides items on.
        self._hidden = np.zeros(len(self._in_base), dtype=bool)
        self._hidden_count = 0
        self._base_live = snapshot.live
        self.overlay = ItemIndex(self.dim, capacity=1024, ef=ef)
        self._lock = threading.Lock()
        self._forget_neighbours()

    @property
    def ef(self) -> int:
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        self._ef = value
        self._base.expansion_search = value
        self.overlay.ef = value

    @property
    def live(self) -> int:
        return self._base_live - self._hidden_count + self.overlay.live

    def __len__(self) -> int:
        return self.live

    @property
    def overlay_size(self) -> int:
        """Items this worker holds beyond the snapshot: hidden base items and overlay items."""
        return self._hidden_count + self.overlay.live

    def _in_live_base(self, key: int) -> bool:
        return key < len(self._in_base) and bool(self._in_base[key]) and not self._hidden[key]

    def contains(self, key: int) -> bool:
        return self.overlay.contains(key) or self._in_live_base(key)

    def _hide(self, keys: np.ndarray) -> None:
        keys = keys[keys < len(self._in_base)]
        keys = keys[self._in_base[keys] & ~self._hidden[keys]]
        self._hidden[keys] = True
        self._hidden_count += len(np.unique(keys))

    def upsert(self, keys: np.ndarray, vectors: np.ndarray, *, threads: int = 1) -> None:
        """New items and new vectors of known ones go to the overlay; the base's are hidden."""
        if len(keys) == 0:
            return
        keys = np.asarray(keys, dtype=np.int64)
        with self._lock:
            self._forget_neighbours()
            self.overlay.upsert(keys, vectors, threads=threads)
            self._hide(keys)

    def delete(self, keys: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        with self._lock:
            self._forget_neighbours()
            self.overlay.delete(keys)
            self._hide(keys)

    def query(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels and inner-product similarities of the ``k`` nearest live items per row."""
        vectors = np.atleast_2d(vectors).astype(np.float32, copy=False)
        k = min(k, self.live)
        if k <= 0 or len(vectors) == 0:
            empty = np.empty((len(vectors), 0))
            return empty.astype(np.int64), empty.astype(np.float32)
        base_keys, base_sims = self._base_query(vectors, k)
        if self.overlay.live:
            keys, sims = self.overlay.query(vectors, k)
            base_keys = [np.concatenate([b, o]) for b, o in zip(base_keys, keys, strict=True)]
            base_sims = [np.concatenate([b, o]) for b, o in zip(base_sims, sims, strict=True)]
        width = min(k, *(len(row) for row in base_keys))
        labels = np.empty((len(vectors), width), dtype=np.int64)
        similarities = np.empty((len(vectors), width), dtype=np.float32)
        for i, (keys, sims) in enumerate(zip(base_keys, base_sims, strict=True)):
            best = np.argsort(-sims, kind="stable")[:width]
            labels[i], similarities[i] = keys[best], sims[best]
        return labels, similarities

    def _base_query(self, vectors: np.ndarray, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per row, the live base items among the nearest (at least ``k`` where the base holds
        that many live ones near enough to find)."""
        wanted = min(k, max(self._base_live - self._hidden_count, 0))
        count = k + min(self._hidden_count, MARGIN)
        for attempt in range(RETRIES + 1):
            found = self._base.search(vectors, count, threads=1)
            keys, distances = np.atleast_2d(found.keys), np.atleast_2d(found.distances)
            counts = np.atleast_1d(found.counts) if hasattr(found, "counts") else [len(keys[0])]
            rows_k, rows_s = [], []
            for row, n in enumerate(counts):
                got = keys[row, :n].astype(np.int64)
                keep = ~self._hidden[got]
                rows_k.append(got[keep])
                rows_s.append(1.0 - distances[row, :n][keep].astype(np.float32))
            if min(len(r) for r in rows_k) >= wanted or attempt == RETRIES:
                return rows_k, rows_s
            count *= 2
        raise AssertionError("unreachable")

    def live_vectors(self, keys: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The live ones among ``keys`` and their vectors, in the order given."""
        with self._lock:
            live = [k for k in map(int, keys) if self.contains(k)]
            in_overlay = [k for k in live if self.overlay.contains(k)]
            from_base = [k for k in live if not self.overlay.contains(k)]
        out = np.zeros((len(live), self.dim), dtype=np.float32)
        if not live:
            return np.asarray(live, dtype=np.int64), out
        where = {key: i for i, key in enumerate(live)}
        if in_overlay:
            found, vectors = self.overlay.live_vectors(in_overlay)
            out[[where[int(k)] for k in found]] = vectors
            lost = set(in_overlay) - set(found.tolist())  # deleted meanwhile by another thread
            live = [k for k in live if k not in lost]
        if from_base:
            rows = self._base.get(np.asarray(from_base, dtype=np.uint64), dtype=np.float32)
            for key, row in zip(from_base, rows, strict=True):
                out[where[key]] = np.asarray(row).reshape(-1)
        keep = [where[k] for k in live]
        return np.asarray(live, dtype=np.int64), out[keep]

    def vectors(self, keys: np.ndarray | list[int]) -> np.ndarray:
        return self.live_vectors(keys)[1]

    def save(self, path: Path) -> None:
        """Nothing to save: the snapshot is on disk, and the overlay is replayed from the feed."""
