"""The HNSW index over item vectors (hnswlib), with incremental add, update and delete.

Labels are the items' integer keys. hnswlib must not run ``add_items`` concurrently with
``knn_query`` (its README says so), so every call takes one lock; hnswlib releases the GIL while
it works, so a bulk add in a worker thread, done in chunks, interleaves with serving queries.
The index is saved with its catalog revision, so a restart applies only later changes.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from slatebandit.memory import FirstInFirstOut, Held, held

ABSENT, LIVE, DELETED = 0, 1, 2
SIMILAR_ROWS = 50_000  # neighbour lists ``neighbours_of`` keeps (about 23 MB at k=21, with keys)
NEAREST_ROWS = 10_000  # answers ``nearest`` keeps (about 10 MB at k=100 and 64 dimensions)


class NeighbourCache:
    """``neighbours_of`` and ``nearest`` over an index's ``query`` and ``live_vectors``, with
    the rows kept until the index next changes. The index holds ``_lock`` and calls
    ``_forget_neighbours`` on every add, update or delete."""

    _lock: threading.Lock

    def contains(self, key: int) -> bool:
        raise NotImplementedError

    def query(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def live_vectors(self, keys: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def neighbours_of(self, keys: Sequence[int], k: int) -> np.ndarray:
        """Labels of the ``k`` nearest live items to each live item of ``keys`` (the item
        itself among them), one row per live key, in the order of ``keys``.

        Rows are kept until the index next changes (the latest ``SIMILAR_ROWS``): a shopper's
        recent items seed every one of their slates, so the same rows are asked for again and
        again, and an HNSW search each time cost 5 of a slate's 6 searches with a history
        (``benchmarks/slate_path.py --history``). Any add, update or delete forgets them all,
        so a row is always what ``query`` would answer now."""
        with self._lock:
            generation = self._generation
            live = [key for key in map(int, keys) if self.contains(key)]
            rows = {key: self._similar[key, k] for key in live if (key, k) in self._similar}
        missing = [key for key in live if key not in rows]
        if missing:
            _, vectors = self.live_vectors(missing)
            labels, _ = self.query(vectors, k)
            with self._lock:
                changed = self._generation != generation
                if not changed:
                    for key, row in zip(missing, labels, strict=True):
                        rows[key] = self._similar.keep((key, k), row)
            if changed:  # an add or delete came between: search afresh, keep nothing
                return self.query(self.live_vectors(live)[1], k)[0]
        if not live:
            return np.empty((0, 0), dtype=np.int64)
        return np.stack([rows[key] for key in live])

    def nearest(self, vector: np.ndarray, k: int) -> np.ndarray:
        """Labels of the ``k`` nearest live items to ``vector``: ``query``'s row for it, kept
        like ``neighbours_of``'s rows (by the vector's bytes) until the index next changes.

        A shopper's session vector stays the same from one of their slates to the next until
        they act, and its search (k=100, the session generator's) was a slate's costliest."""
        key = (np.asarray(vector, dtype=np.float32).tobytes(), k)
        with self._lock:
            generation = self._generation
            row = self._nearest.get(key)
        if row is not None:
            return row
        row = self.query(vector, k)[0][0]
        with self._lock:
            if self._generation == generation:  # else an add or delete came between
                self._nearest.keep(key, row)
        return row

    def memory(self) -> Held:
        """What ``neighbours_of`` and ``nearest`` keep."""
        with self._lock:
            return Held.total([held(self._similar), held(self._nearest)])

    def _forget_neighbours(self) -> None:
        self._similar: FirstInFirstOut[tuple[int, int], np.ndarray]
        self._similar = FirstInFirstOut(SIMILAR_ROWS)
        self._nearest: FirstInFirstOut[tuple[bytes, int], np.ndarray]
        self._nearest = FirstInFirstOut(NEAREST_ROWS)
        self._generation = getattr(self, "_generation", 0) + 1


class ItemIndex(NeighbourCache):
    def __init__(
        self,
        dim: int,
        capacity: int = 1024,
        *,
        m: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        seed: int = 100,
    ) -> None:
        self.dim = dim
        self.ef = ef
        self.rev = 0  # the catalog revision this index reflects
        self.factors_version = 0  # the collaborative vectors blended in (retrieval.collab)
        self._lock = threading.Lock()
        self._index = hnswlib.Index(space="ip", dim=dim)
        self._index.init_index(
            max_elements=capacity, M=m, ef_construction=ef_construction, random_seed=seed
        )
        self._index.set_ef(ef)
        self._state = np.zeros(capacity, dtype=np.uint8)  # per label: ABSENT, LIVE or DELETED
        self.live = 0
        self._forget_neighbours()

    def __len__(self) -> int:
        return self.live

    def contains(self, key: int) -> bool:
        return key < len(self._state) and self._state[key] == LIVE

    def upsert(self, keys: np.ndarray, vectors: np.ndarray, *, threads: int = 1) -> None:
        """Add new keys or replace the vectors of known ones (deleted ones come back)."""
        if len(keys) == 0:
            return
        keys = np.asarray(keys, dtype=np.int64)
        with self._lock:
            self._forget_neighbours()
            self._reserve(int(keys.max()) + 1, len(keys))
            self._index.add_items(vectors, keys, num_threads=threads)
            self.live += int(np.count_nonzero(self._state[keys] != LIVE))
            self._state[keys] = LIVE

    def delete(self, keys: np.ndarray) -> None:
        with self._lock:
            self._forget_neighbours()
            for key in np.asarray(keys, dtype=np.int64):
                if self.contains(int(key)):
                    self._index.mark_deleted(int(key))
                    self._state[key] = DELETED
                    self.live -= 1

    def query(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels and inner-product similarities of the ``k`` nearest live items per row."""
        vectors = np.atleast_2d(vectors).astype(np.float32, copy=False)
        empty = np.empty((len(vectors), 0))
        with self._lock:
            k = min(k, self.live)
            self._index.set_ef(max(self.ef, k))
            while k > 0:
                try:
                    labels, distances = self._index.knn_query(vectors, k=k, num_threads=1)
                    return labels.astype(np.int64), 1.0 - distances
                except RuntimeError:
                    # Many deleted elements can leave fewer than k reachable: ask for fewer.
                    k //= 2
        return empty.astype(np.int64), empty.astype(np.float32)

    def live_vectors(self, keys: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The live ones among ``keys`` and their vectors, read under one lock, so an item
        deleted meanwhile by another thread is skipped rather than raising."""
        with self._lock:
            live = np.asarray([k for k in map(int, keys) if self.contains(k)], dtype=np.int64)
            if len(live) == 0:
                return live, np.zeros((0, self.dim), dtype=np.float32)
            found = self._index.get_items(live.tolist(), return_type="numpy")
        return live, np.asarray(found, dtype=np.float32).reshape(-1, self.dim)

    def vectors(self, keys: np.ndarray | list[int]) -> np.ndarray:
        with self._lock:
            found = self._index.get_items(list(map(int, keys)), return_type="numpy")
        return np.asarray(found, dtype=np.float32).reshape(-1, self.dim)

    def _reserve(self, max_label: int, adding: int) -> None:
        needed = max(max_label, self._index.get_current_count() + adding)
        capacity = self._index.get_max_elements()
        if needed > capacity:
            capacity = max(needed, int(capacity * 1.5))
            self._index.resize_index(capacity)
        if max_label > len(self._state):
            grown = np.zeros(max(max_label, int(len(self._state) * 1.5)), dtype=np.uint8)
            grown[: len(self._state)] = self._state
            self._state = grown

    def save(self, path: Path) -> None:
        """Write ``path`` (a small JSON manifest) and the data files it names.

        Data files carry the revision and pid in their names and the manifest is replaced last,
        so a reader sees either the old index or the new one, never a mix.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            stem = f"{path.stem}-{self.rev}-{os.getpid()}"
            self._index.save_index(str(path.with_name(stem + ".bin")))
            np.save(path.with_name(stem + ".state.npy"), self._state)
            manifest = {
                "stem": stem,
                "rev": self.rev,
                "dim": self.dim,
                "live": self.live,
                "ef": self.ef,
                "factors_version": self.factors_version,
            }
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(manifest))
            os.replace(tmp, path)
        for old in path.parent.glob(f"{path.stem}-*"):
            if not old.name.startswith(stem + ".") and time.time() - old.stat().st_mtime > 60:
                old.unlink(missing_ok=True)

    @staticmethod
    def saved_rev(path: Path) -> int:
        """The catalog revision of the index saved at ``path``, without loading it."""
        return int(ItemIndex.manifest(path)["rev"])

    @staticmethod
    def manifest(path: Path) -> dict[str, Any]:
        """What the index saved at ``path`` holds (revision, dimensions, ...), unloaded."""
        return dict(json.loads(path.read_text()))

    @classmethod
    def load(cls, path: Path) -> ItemIndex:
        manifest = json.loads(path.read_text())
        self = cls.__new__(cls)
        self.dim, self.ef = manifest["dim"], manifest["ef"]
        self.rev, self.live = manifest["rev"], manifest["live"]
        self.factors_version = manifest.get("factors_version", 0)
        self._lock = threading.Lock()
        self._index = hnswlib.Index(space="ip", dim=self.dim)
        self._index.load_index(str(path.with_name(manifest["stem"] + ".bin")))
        self._index.set_ef(self.ef)
        self._state = np.load(path.with_name(manifest["stem"] + ".state.npy"))
        self._forget_neighbours()
        return self
