"""Catalog columns that live outside Python objects: strings as one byte blob plus offsets, and
the item id -> key lookup as a sorted array of stable hashes.

At a million items, Python lists of ``str`` and a ``dict`` of ids cost hundreds of MB per worker
and tens of seconds to build, and every worker held its own. Blobs and arrays instead come
memory-mapped from the machine's snapshot (``retrieval.snapshot``): every worker reads the same
page-cache pages. What changed since the snapshot sits in a small per-worker dict on top, so the
columns still read and write like the lists they replace (``catalog.features[key]``,
``catalog.key_of.get(item_id)``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar, overload

import numpy as np

from slatebandit.memory import FirstInFirstOut, Held, held

_NO_SPANS = np.zeros((0, 2), dtype=np.int64)
CACHED_STRINGS = 50_000  # per column and worker: about 10 MB of scorer features
T = TypeVar("T")  # str, or str | None for ids


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process and on every machine
    (Python's ``hash`` of a str is salted per process, so it cannot index a shared file)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def pack_strings(values: Iterable[str | None], start: int = 0) -> tuple[bytes, np.ndarray]:
    """One UTF-8 blob and the (start, end) span of each value in it, counted from ``start``
    (so the blobs of successive chunks concatenate); ``None`` packs as empty."""
    encoded = [(value or "").encode() for value in values]
    ends = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
    spans = np.empty((len(encoded), 2), dtype=np.int64)
    spans[:, 1] = ends + start
    spans[:, 0] = spans[:, 1] - np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    return b"".join(encoded), spans


class _Strings(Generic[T]):
    """A list-like column of strings: a read-only base (a blob and each key's (start, end) span
    in it) under a writable overlay. A key without a value, or with an empty base string, reads
    as ``missing``."""

    def __init__(
        self,
        blob: bytes | np.ndarray,
        spans: np.ndarray,
        missing: T,
        size: int | None,
    ) -> None:
        # Plain buffers, not numpy (memory-mapped) arrays: a slate reads about 200 strings,
        # and indexing a memmap makes a memmap object each time (4.5 us a string, measured;
        # 0.4 us through the memoryviews).
        self._blob = (
            memoryview(blob)
            if isinstance(blob, bytes)
            else np.ascontiguousarray(blob, dtype=np.uint8).data
        )
        self._spans = np.ascontiguousarray(spans, dtype=np.int64).reshape(-1).data
        self._base = len(spans)
        self._missing: T = missing
        self._size = self._base if size is None else size
        self.overlay: dict[int, T] = {}
        self._cache: FirstInFirstOut[int, T] = FirstInFirstOut(CACHED_STRINGS)  # ``take``'s

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, key: int | np.integer) -> T: ...

    @overload
    def __getitem__(self, key: slice) -> list[T]: ...

    def __getitem__(self, key: int | np.integer | slice) -> T | list[T]:
        if isinstance(key, slice):
            return [self[i] for i in range(*key.indices(self._size))]
        key = int(key)
        if key < 0 or key >= self._size:
            raise IndexError(key)
        if key in self.overlay:
            return self.overlay[key]
        return self._base_value(key)

    def take(self, keys: Iterable[int]) -> list[T]:
        """``[self[key] for key in keys]`` for keys known to be in range: what a slate reads
        for its 200 candidates. Strings read from the base stay in a bounded cache (the same
        popular candidates come up slate after slate: 114 us a slate from the base, 17 from
        Python strings, measured), the oldest dropped first once it is full."""
        overlay, cache = self.overlay, self._cache
        out: list[T] = []
        for key in keys:
            if key in overlay:
                out.append(overlay[key])
            elif (value := cache.get(key)) is not None:
                out.append(value)
            else:
                out.append(cache.keep(key, self._base_value(key)))
        return out

    def memory(self) -> Held:
        """The strings ``take`` keeps decoded."""
        return held(self._cache)

    def _base_value(self, key: int) -> T:
        if key >= self._base:
            return self._missing
        start, end = self._spans[2 * key], self._spans[2 * key + 1]
        return str(self._blob[start:end], "utf-8") if end > start else self._missing  # type: ignore[return-value]

    def __setitem__(self, key: int | np.integer, value: T) -> None:
        key = int(key)
        if key < 0 or key >= self._size:
            raise IndexError(key)
        self.overlay[key] = value

    def grow(self, size: int) -> None:
        """Make room for keys below ``size`` (they read as ``missing``)."""
        self._size = max(self._size, size)


class StringColumn(_Strings[str], Sequence[str]):
    """Titles and scorer features: a key without one reads as ``""``."""

    def __init__(
        self,
        blob: bytes | np.ndarray = b"",
        spans: np.ndarray = _NO_SPANS,
        *,
        size: int | None = None,
    ) -> None:
        super().__init__(blob, spans, "", size)


class IdColumn(_Strings[str | None], Sequence[str | None]):
    """Item ids: a key that never held an item reads as ``None``."""

    def __init__(
        self,
        blob: bytes | np.ndarray = b"",
        spans: np.ndarray = _NO_SPANS,
        *,
        size: int | None = None,
    ) -> None:
        super().__init__(blob, spans, None, size)


class KeyLookup:
    """Item id -> key, as a sorted array of stable hashes with the keys beside them (verified
    against the stored id, so a hash collision never returns the wrong item), under a writable
    overlay for ids added since. Reads like the dict it replaces: ``get``, ``[]``, ``in``."""

    def __init__(
        self,
        ids: IdColumn,
        hashes: np.ndarray | None = None,
        keys: np.ndarray | None = None,
    ) -> None:
        self._ids = ids
        self._hashes = np.zeros(0, dtype=np.uint64) if hashes is None else hashes
        self._keys = np.zeros(0, dtype=np.int64) if keys is None else keys
        self.overlay: dict[str, int] = {}

    @staticmethod
    def index(ids: Iterable[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """Sorted hashes and the keys they belong to, for the ids of keys 0, 1, ..."""
        pairs = [(stable_hash(i), key) for key, i in enumerate(ids) if i]
        hashes = np.fromiter((h for h, _ in pairs), dtype=np.uint64, count=len(pairs))
        keys = np.fromiter((k for _, k in pairs), dtype=np.int64, count=len(pairs))
        order = np.argsort(hashes, kind="stable")
        return hashes[order], keys[order]

    def get(self, item_id: str, default: int | None = None) -> int | None:
        key = self.overlay.get(item_id)
        if key is not None:
            return key
        if len(self._hashes) == 0:
            return default
        wanted = np.uint64(stable_hash(item_id))
        at = int(np.searchsorted(self._hashes, wanted))
        while at < len(self._hashes) and self._hashes[at] == wanted:
            key = int(self._keys[at])
            if self._ids[key] == item_id:
                return key
            at += 1
        return default

    def __getitem__(self, item_id: str) -> int:
        key = self.get(item_id)
        if key is None:
            raise KeyError(item_id)
        return key

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.get(item_id) is not None

    def __setitem__(self, item_id: str, key: int) -> None:
        self.overlay[item_id] = key
