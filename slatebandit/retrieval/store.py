"""ItemStore: the catalog, its embeddings and the HNSW index, kept in step with the database.

The ``items`` table is the truth. At start the store reads it whole into the in-memory
catalog and loads the saved index, re-embedding only items changed since the index was saved
(or building the index if there is none). While serving, ``sync`` applies the change feed, so
catalog changes made by another worker or by ``slatebandit items load`` arrive within a poll.

Index vectors blend content and collaborative vectors (``retrieval.collab``). When a new set of
collaborative vectors arrives, ``build_with`` builds a whole new index beside the serving one
(on a worker thread, one core) and ``swap_in`` replays the catalog changes made meanwhile onto it
and swaps it in with one assignment: queries never wait for the build (DESIGN.md invariant 6).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine
from tqdm import tqdm

from slatebandit.logging import changes_since, count_live_items, latest_rev
from slatebandit.retrieval.catalog import Catalog
from slatebandit.retrieval.collab import INDEX_DIM, ItemFactors, blend, content_of
from slatebandit.retrieval.content import DIM, ContentEmbedder, title_words
from slatebandit.retrieval.index import ItemIndex

log = logging.getLogger(__name__)
_CHUNK = 256  # items per index call while serving, so queries interleave with a bulk add
_REREAD = 256  # revisions re-read below the watermark on every sync
# Items per step of a rebuild beside serving: reading vectors out of the serving index holds
# its lock (about 12 us an item), so steps stay short enough not to stall queries.
_BUILD_CHUNK = 256


class ItemStore:
    def __init__(
        self,
        catalog: Catalog,
        index: ItemIndex,
        index_path: Path | None = None,
        factors: ItemFactors | None = None,
    ) -> None:
        self.catalog = catalog
        self.index = index
        self.index_path = index_path
        self.factors = factors or ItemFactors.empty()
        self.embedder = ContentEmbedder(DIM)
        self._sync_lock = asyncio.Lock()
        self._touched: set[int] | None = None  # keys changed while a rebuild runs

    @classmethod
    def open(
        cls,
        engine: Engine,
        index_path: Path | None,
        *,
        fresh_impressions: int = 50,
        ef: int | None = None,
        progress: bool = False,
        factors: ItemFactors | None = None,
    ) -> ItemStore:
        factors = factors or ItemFactors.empty()
        index = None
        if index_path is not None and index_path.exists():
            try:
                index = ItemIndex.load(index_path)
                if index.dim != INDEX_DIM or index.factors_version != factors.version:
                    raise ValueError("built with other dimensions or collaborative vectors")
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                log.warning("index %s not usable (%s); rebuilding it", index_path, exc)
                index = None
        saved_rev = index.rev if index is not None else 0
        with engine.connect() as conn:
            total = count_live_items(conn)
            # A new index is sized for the catalog at once: growing it 1.5x at a time from a
            # small start costs copies and peaks at about twice the final memory.
            if index is None:
                index = ItemIndex(INDEX_DIM, capacity=total + 1024)
                index.factors_version = factors.version
            store = cls(Catalog(fresh_impressions), index, index_path, factors)
            if ef is not None:
                index.ef = ef
            bar = tqdm(total=total, desc="catalog", unit="item", disable=not progress)
            for rows in changes_since(conn, 0):
                embed, deleted = store.catalog.apply(rows)
                stale = [e for e in embed if store.catalog.rev[e[0]] > saved_rev]
                store._index_changes(stale, deleted, chunk=8192, threads=os.cpu_count() or 1)
                store.index.rev = max(store.index.rev, rows[-1].rev)
                bar.update(len(embed))
            bar.close()
        if index_path is not None and store.index.rev != saved_rev:
            store.save()
        return store

    @staticmethod
    def index_is_current(engine: Engine, index_path: Path) -> bool:
        """Whether the saved index already reflects every catalog change, with this version's
        dimensions and the newest collaborative vectors."""
        from slatebandit.logging.embeddings import latest_factors_version

        try:
            manifest = ItemIndex.manifest(index_path)
        except (OSError, ValueError, KeyError):
            return False
        with engine.connect() as conn:
            return (
                manifest["rev"] == latest_rev(conn)
                and manifest["dim"] == INDEX_DIM
                and manifest.get("factors_version", 0) == latest_factors_version(conn)
            )

    async def sync(self, engine: Engine) -> int:
        """Apply catalog changes newer than what this process has; returns how many."""
        async with self._sync_lock:
            return await asyncio.to_thread(self._sync, engine)

    async def apply(self, rows: Sequence[Any]) -> None:
        """Apply rows this process just committed, before answering the request."""
        async with self._sync_lock:
            await asyncio.to_thread(self._apply, rows)

    def save(self) -> None:
        if self.index_path is not None:
            self.index.save(self.index_path)

    def _sync(self, engine: Engine) -> int:
        # ``index.rev`` only advances here, over the feed read in order, so it is a watermark
        # below which everything has been applied. The feed is re-read from a little below it
        # because PostgreSQL may commit revisions out of order; re-applying a row is a no-op.
        applied = 0
        with engine.connect() as conn:
            for rows in changes_since(conn, max(0, self.index.rev - _REREAD)):
                applied += self._apply(rows)
                self.index.rev = max(self.index.rev, rows[-1].rev)
        return applied

    def _apply(self, rows: Sequence[Any]) -> int:
        embed, deleted = self.catalog.apply(rows)
        self._index_changes(embed, deleted)
        if embed or deleted:  # after the index changed: filter masks built from now on see it
            self.catalog.version += 1
        return len(embed) + len(deleted)

    def _index_changes(
        self,
        embed: list,
        deleted: list[int],
        chunk: int = _CHUNK,
        threads: int = 1,  # type: ignore[type-arg]
    ) -> None:
        for start in range(0, len(embed), chunk):
            part = embed[start : start + chunk]
            keys = np.fromiter((key for key, _, _ in part), dtype=np.int64, count=len(part))
            content = self.embedder.embed_many(
                [(tokens, title_words(title)) for _, tokens, title in part]
            )
            collab, counts = self.factors.lookup(keys)
            self.index.upsert(keys, blend(content, collab, counts), threads=threads)
        if deleted:
            self.index.delete(np.asarray(deleted, dtype=np.int64))
        if self._touched is not None:
            self._touched.update(key for key, _, _ in embed)
            self._touched.update(deleted)

    def build_with(self, factors: ItemFactors) -> ItemIndex:
        """A new index holding every live item with ``factors`` blended in, built beside the
        serving one; call on a worker thread, then ``swap_in``."""
        old, old_factors = self.index, self.factors
        self._touched = set()
        try:
            keys = np.flatnonzero(self.catalog.available).astype(np.int64)
            new = ItemIndex(INDEX_DIM, capacity=len(keys) + 1024, ef=old.ef)
            new.factors_version = factors.version
            for start in range(0, len(keys), _BUILD_CHUNK):
                part = keys[start : start + _BUILD_CHUNK]
                self._move(part, old, old_factors, new, factors)
        except BaseException:
            self._touched = None
            raise
        new.rev = old.rev
        return new

    async def swap_in(self, new: ItemIndex, factors: ItemFactors) -> None:
        """Bring ``new`` up to date with the changes made while it was built, then serve it."""
        async with self._sync_lock:  # no catalog change lands between the catch-up and the swap
            await asyncio.to_thread(self._catch_up, new, factors)
            self.index, self.factors = new, factors  # one assignment each: queries see either
            self._touched = None

    def _catch_up(self, new: ItemIndex, factors: ItemFactors) -> None:
        touched = np.array(sorted(self._touched or ()), dtype=np.int64)
        moved = self._move(touched, self.index, self.factors, new, factors)
        gone = [int(k) for k in np.setdiff1d(touched, moved) if new.contains(int(k))]
        if gone:
            new.delete(np.asarray(gone, dtype=np.int64))
        new.rev = self.index.rev
        self.catalog.version += 1  # masks cached over the old index hold its vectors

    @staticmethod
    def _move(
        keys: np.ndarray,
        old: ItemIndex,
        old_factors: ItemFactors,
        new: ItemIndex,
        factors: ItemFactors,
    ) -> np.ndarray:
        """Copy the live ones of ``keys`` into ``new``, re-blended; returns those it copied."""
        keys, vectors = old.live_vectors(keys)
        if len(keys):
            content = content_of(vectors, old_factors.lookup(keys)[1])
            collab, counts = factors.lookup(keys)
            new.upsert(keys, blend(content, collab, counts), threads=1)
        return keys
