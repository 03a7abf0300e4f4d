"""ItemStore: the catalog, its embeddings and the HNSW index, kept in step with the database.

The ``items`` table is the truth. A serving worker (``open`` with an index path) maps the
machine's snapshot (``retrieval.snapshot``: catalog columns and a usearch index, built once per
machine and shared read-only by its workers) and applies the change feed after it into a small
overlay of its own (``retrieval.shared_index``). Without an index path (tests, tools) the store
reads the table whole into memory and builds an hnswlib index. While serving, ``sync`` applies
the change feed, so catalog changes made by another worker or by ``slatebandit items load``
arrive within a poll. When a worker's overlay outgrows ``OVERLAY_LIMIT``, it has a new snapshot
built in a process of its own (one per machine, by file lock); every worker then maps it, catches
up on the changes made meanwhile and swaps it in.

Index vectors blend content and collaborative vectors (``retrieval.collab``). When a new set of
collaborative vectors arrives, ``build_with`` builds a whole new index beside the serving one
(on a worker thread, one core) and ``swap_in`` replays the catalog changes made meanwhile onto it
and swaps it in with one assignment: queries never wait for the build (DESIGN.md invariant 6).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine
from tqdm import tqdm

from slatebandit.logging import changes_since, count_live_items
from slatebandit.retrieval import snapshot
from slatebandit.retrieval.catalog import Catalog
from slatebandit.retrieval.collab import INDEX_DIM, ItemFactors, blend, content_of
from slatebandit.retrieval.content import DIM, ContentEmbedder, title_words
from slatebandit.retrieval.index import ItemIndex
from slatebandit.retrieval.shared_index import SharedIndex

log = logging.getLogger(__name__)
_CHUNK = 256  # items per index call while serving, so queries interleave with a bulk add
_REREAD = 256  # revisions re-read below the watermark on every sync
# Items per step of a rebuild beside serving: reading vectors out of the serving index holds
# its lock (about 12 us an item), so steps stay short enough not to stall queries.
_BUILD_CHUNK = 256
# Items a worker holds beyond its snapshot before it has a new one built: about 30 MB of overlay
# per worker, and a margin the base is over-asked by that stays small.
OVERLAY_LIMIT = 50_000


class ItemStore:
    def __init__(
        self,
        catalog: Catalog,
        index: ItemIndex | SharedIndex,
        index_path: Path | None = None,
        factors: ItemFactors | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.catalog = catalog
        self.index: ItemIndex | SharedIndex = index
        self._engine = engine  # where a snapshot builder reads the catalog from
        self._builder: subprocess.Popen[bytes] | None = None
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
        """The store over the machine's snapshot at ``index_path`` (built first if there is
        none for ``factors``), or, without a path, over an in-memory copy of the table."""
        factors = factors or ItemFactors.empty()
        if index_path is not None:
            shared = snapshot.ensure(engine, index_path, factors, progress=progress)
            index = SharedIndex(shared, ef=64 if ef is None else ef)
            catalog = Catalog.from_snapshot(shared, fresh_impressions)
            store = cls(catalog, index, index_path, factors, engine)
            store._sync(engine)  # the changes after the snapshot, into this worker's overlay
            return store
        with engine.connect() as conn:
            total = count_live_items(conn)
            # The index is sized for the catalog at once: growing it 1.5x at a time from a
            # small start costs copies and peaks at about twice the final memory.
            memory = ItemIndex(INDEX_DIM, capacity=total + 1024)
            memory.factors_version = factors.version
            store = cls(Catalog(fresh_impressions), memory, None, factors, engine)
            if ef is not None:
                memory.ef = ef
            bar = tqdm(total=total, desc="catalog", unit="item", disable=not progress)
            for rows in changes_since(conn, 0):
                embed, deleted = store.catalog.apply(rows)
                store._index_changes(embed, deleted, chunk=8192, threads=os.cpu_count() or 1)
                store.index.rev = max(store.index.rev, rows[-1].rev)
                bar.update(len(embed))
            bar.close()
        return store

    @staticmethod
    def build_snapshot(
        engine: Engine, index_path: Path, factors: ItemFactors, *, progress: bool = False
    ) -> None:
        """Have the machine's snapshot current for ``factors`` (what ``serve`` does once before
        its workers start)."""
        snapshot.ensure(
            engine, index_path, factors, max_behind=OVERLAY_LIMIT // 2, progress=progress
        )

    @staticmethod
    def index_is_current(engine: Engine, index_path: Path) -> bool:
        """Whether the machine's snapshot has this version's dimensions and the newest
        collaborative vectors, and is few enough changes behind the catalog that a worker
        holds them in its overlay."""
        from slatebandit.logging.embeddings import latest_factors_version

        with engine.connect() as conn:
            version = latest_factors_version(conn)
        if not snapshot.is_current(index_path, version):
            return False
        behind = snapshot.changes_after(engine, snapshot.read_manifest(index_path)["rev"])
        return behind <= OVERLAY_LIMIT // 2

    async def sync(self, engine: Engine) -> int:
        """Apply catalog changes newer than what this process has; returns how many. Then
        follow the machine's snapshot: serve a newer one, or have one built if the overlay
        has outgrown its bound."""
        async with self._sync_lock:
            applied = await asyncio.to_thread(self._sync, engine)
            if isinstance(self.index, SharedIndex):
                newer = await asyncio.to_thread(self._follow_snapshot)
                if newer is not None:
                    self._serve_snapshot(*newer, self.factors)
            return applied

    async def apply(self, rows: Sequence[Any]) -> None:
        """Apply rows this process just committed, before answering the request."""
        async with self._sync_lock:
            await asyncio.to_thread(self._apply, rows)

    def save(self) -> None:
        """Nothing to do for a snapshot (on disk already; the overlay is the feed after it)."""
        if self.index_path is not None and isinstance(self.index, ItemIndex):
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
        embed: list,  # type: ignore[type-arg]
        deleted: list[int],
        chunk: int = _CHUNK,
        threads: int = 1,
        *,
        into: tuple[ItemIndex | SharedIndex, ItemFactors] | None = None,
    ) -> None:
        """Embed and index ``embed``, delete ``deleted``: in the serving index, or ``into``
        another (index, factors) being brought up to date."""
        index, factors = into or (self.index, self.factors)
        for start in range(0, len(embed), chunk):
            part = embed[start : start + chunk]
            keys = np.fromiter((key for key, _, _ in part), dtype=np.int64, count=len(part))
            content = self.embedder.embed_many(
                [(tokens, title_words(title)) for _, tokens, title in part]
            )
            collab, counts = factors.lookup(keys)
            index.upsert(keys, blend(content, collab, counts), threads=threads)
        if deleted:
            index.delete(np.asarray(deleted, dtype=np.int64))
        if into is not None:
            return
        if self._touched is not None:
            self._touched.update(key for key, _, _ in embed)
            self._touched.update(deleted)

    def build_with(self, factors: ItemFactors) -> ItemIndex | SharedIndex:
        """A new index holding every live item with ``factors`` blended in, built beside the
        serving one; call on a worker thread, then ``swap_in``. On a snapshot, the machine's
        builder process writes it once (the first worker to ask waits for it to finish, the
        others for the lock) and this worker maps it."""
        if isinstance(self.index, SharedIndex):
            self._run_builder(factors.version, wait=True)
            built = snapshot.Snapshot.open(self._index_path())
            if built.factors_version != factors.version:
                raise RuntimeError(f"snapshot built for vectors {built.factors_version}")
            return SharedIndex(built, self.index.ef)
        old, old_factors = self.index, self.factors
        assert isinstance(old, ItemIndex)
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

    async def swap_in(self, new: ItemIndex | SharedIndex, factors: ItemFactors) -> None:
        """Bring ``new`` up to date with the changes made while it was built, then serve it."""
        async with self._sync_lock:  # no catalog change lands between the catch-up and the swap
            if isinstance(new, SharedIndex):
                catalog = await asyncio.to_thread(self._catch_up_snapshot, new, factors)
                self._serve_snapshot(catalog, new, factors)
                return
            await asyncio.to_thread(self._catch_up, new, factors)
            self.index, self.factors = new, factors  # one assignment each: queries see either
            self._touched = None

    # The machine snapshot ----------------------------------------------------------------

    def _index_path(self) -> Path:
        assert self.index_path is not None, "a shared index always has its manifest path"
        return self.index_path

    def _follow_snapshot(self) -> tuple[Catalog, SharedIndex] | None:
        """A newer snapshot for our vectors, if the machine has one, caught up and ready to
        serve; else, if our overlay has outgrown its bound, have one built (in a process of
        its own) and return None."""
        assert isinstance(self.index, SharedIndex)
        if self._builder is not None and self._builder.poll() is not None:
            self._builder = None  # reaped
        try:
            manifest = snapshot.read_manifest(self._index_path())
        except (OSError, ValueError):
            manifest = {}
        newer = (
            manifest.get("snapshot") not in (None, self.index.snapshot.path.name)
            and manifest.get("factors_version") == self.factors.version
            and manifest.get("rev", 0) > self.index.snapshot.rev
        )
        if newer:
            index = SharedIndex(snapshot.Snapshot.open(self._index_path()), self.index.ef)
            return self._catch_up_snapshot(index, self.factors), index
        if self.index.overlay_size > OVERLAY_LIMIT:
            self._run_builder(self.factors.version, wait=False)
        return None

    def _catch_up_snapshot(self, new: SharedIndex, factors: ItemFactors) -> Catalog:
        """``new``'s catalog, both brought up to date with the feed after its snapshot. Call
        holding the sync lock, so that no change lands between this catch-up and the swap."""
        catalog = Catalog.from_snapshot(new.snapshot, self.catalog.fresh_impressions)
        with self._connect() as conn:
            for rows in changes_since(conn, max(0, new.snapshot.rev - _REREAD)):
                embed, deleted = catalog.apply(rows)
                self._index_changes(embed, deleted, into=(new, factors))
                new.rev = max(new.rev, rows[-1].rev)
        return catalog

    def _serve_snapshot(self, catalog: Catalog, new: SharedIndex, factors: ItemFactors) -> None:
        """Swap in a caught-up snapshot. On the event loop, so no request sees the catalog
        half rebased (category codes from one snapshot, names from the other)."""
        self.catalog.rebase(catalog)
        self.index, self.factors = new, factors  # one assignment each: queries see either
        log.info("serving snapshot %s (revision %d)", new.snapshot.path.name, new.rev)

    def _connect(self) -> Any:
        assert self._engine is not None, "a store on a snapshot keeps its engine"
        return self._engine.connect()

    def _run_builder(self, version: int, *, wait: bool) -> None:
        """Have the machine's snapshot rebuilt for vectors ``version`` by a process of its own,
        so its memory (the whole catalog, briefly) is returned when it ends. Without ``wait``,
        nothing happens if this worker's or another's builder is already at work."""
        if not wait:
            if self._builder is not None:
                return
            with snapshot.builder_lock(self._index_path(), wait=False) as free:
                if not free:
                    return
        assert self._engine is not None
        url = self._engine.url.render_as_string(hide_password=False)
        command = [sys.executable, "-m", "slatebandit.retrieval.snapshot_builder"]
        command += [str(self._index_path()), str(version), str(OVERLAY_LIMIT // 2)]
        # The URL goes by environment, not argv, where any user of the machine could read it.
        env = {**os.environ, "SLATEBANDIT_DATABASE_URL": url}
        if wait:
            subprocess.run(command, env=env, check=True)
        else:
            self._builder = subprocess.Popen(command, env=env)

    # An in-memory index rebuilt beside serving ------------------------------------------

    def _catch_up(self, new: ItemIndex, factors: ItemFactors) -> None:
        touched = np.array(sorted(self._touched or ()), dtype=np.int64)
        assert isinstance(self.index, ItemIndex)
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
        if len(keys):  # in-memory indexes only: a snapshot re-embeds from the catalog
            content = content_of(vectors, old_factors.lookup(keys)[1])
            collab, counts = factors.lookup(keys)
            new.upsert(keys, blend(content, collab, counts), threads=1)
        return keys
