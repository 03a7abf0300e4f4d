"""The machine's catalog snapshot: built once, written to files, memory-mapped by every worker.

A snapshot is a directory beside the index manifest (``recommender.index_path``) holding

- ``ann.usearch``: the HNSW index of every live item (usearch, half-precision vectors), which
  workers serve straight from the file with ``Index.restore(view=True)``;
- the catalog columns as ``.npy`` files (category and brand codes, price, availability,
  revision, creation time), sized with room to grow, mapped copy-on-write so a worker that
  patches a value pays for that page alone;
- item ids, titles and scorer features as one byte blob each with a (start, end) span per key;
- the id -> key lookup as sorted stable hashes (``columns.KeyLookup``).

The manifest names the snapshot directory, the catalog revision and collaborative-vector version
it reflects; it is replaced last, so a reader sees the old snapshot or the new one, never a mix.
Workers apply only the change feed after ``rev`` (``retrieval.store``). One process per machine
builds at a time (an exclusive ``flock`` on a file beside the manifest); the others wait for it or
leave the work to it, and then map what it wrote.

Why usearch: it serves an index from its file, so the pages are shared by every worker through
the page cache instead of each worker holding a private copy (``benchmarks/ann.py`` measured
both libraries on the service's own vectors; the figures are in the README).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select

from slatebandit.logging import changes_since, count_live_items
from slatebandit.logging.schema import items as items_table
from slatebandit.retrieval.collab import INDEX_DIM, ItemFactors, blend
from slatebandit.retrieval.columns import pack_strings, stable_hash
from slatebandit.retrieval.content import (
    DIM,
    ContentEmbedder,
    item_tokens,
    scorer_features,
    title_words,
)

log = logging.getLogger(__name__)
FORMAT = "snapshot-1"
CONNECTIVITY = 16  # HNSW M, as the in-memory hnswlib index
# HNSW ef_construction. Unlike the search breadth it is no speed/recall dial: a graph built too
# narrow leaves items that no search reaches, so recall stops rising with ef (64: 0.98 at 1M and
# 0.93 at 5M whatever the breadth; 128: 0.995 at 1M at ef=64), at 0.6 of the build speed of 64.
EXPANSION_ADD = 128
STORAGE = "f16"  # half the memory of f32 at the same recall (benchmarks/ann.py)
NUMERIC = ("category", "brand", "price", "available", "rev", "created")
STRINGS = ("item_ids", "titles", "features")
_DTYPES = {
    "category": np.int32,
    "brand": np.int32,
    "price": np.float32,
    "available": bool,
    "rev": np.int64,
    "created": np.float64,
}


def headroom(keys: int) -> int:
    """Keys a snapshot's columns make room for beyond the largest key, so a worker adding items
    rarely copies a whole column out of the shared file."""
    return max(1024, keys // 20)


@dataclass(frozen=True)
class Snapshot:
    """An opened snapshot: every array is a read-only or copy-on-write map of its file."""

    path: Path  # the directory
    rev: int
    factors_version: int
    dim: int
    live: int  # items in the ANN index
    columns: dict[str, np.ndarray]  # NUMERIC name -> array of ``capacity`` rows
    strings: dict[str, tuple[np.ndarray, np.ndarray]]  # STRINGS name -> (blob, spans)
    id_hashes: np.ndarray
    id_keys: np.ndarray
    in_index: np.ndarray  # bool per key: in ``ann.usearch``
    category_names: list[str]
    brand_names: list[str]

    @property
    def capacity(self) -> int:
        return len(self.columns["rev"])

    def ann(self) -> Any:
        """The HNSW index, memory-mapped from its file (read-only, shared page cache)."""
        from usearch.index import Index

        return Index.restore(str(self.path / "ann.usearch"), view=True)

    @classmethod
    def open(cls, manifest_path: Path) -> Snapshot:
        manifest = read_manifest(manifest_path)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} manifest")
        where = manifest_path.parent / manifest["snapshot"]
        meta = json.loads((where / "meta.json").read_text())
        columns = {n: np.load(where / f"{n}.npy", mmap_mode="c") for n in NUMERIC}
        strings = {
            n: (
                np.load(where / f"{n}.blob.npy", mmap_mode="r"),
                np.load(where / f"{n}.spans.npy", mmap_mode="r"),
            )
            for n in STRINGS
        }
        return cls(
            path=where,
            rev=meta["rev"],
            factors_version=meta["factors_version"],
            dim=meta["dim"],
            live=meta["live"],
            columns=columns,
            strings=strings,
            id_hashes=np.load(where / "id_hashes.npy", mmap_mode="r"),
            id_keys=np.load(where / "id_keys.npy", mmap_mode="r"),
            in_index=np.load(where / "in_index.npy", mmap_mode="r"),
            category_names=meta["category_names"],
            brand_names=meta["brand_names"],
        )


def read_manifest(manifest_path: Path) -> dict[str, Any]:
    return dict(json.loads(manifest_path.read_text()))


def is_current(manifest_path: Path, factors_version: int) -> bool:
    """Whether a snapshot is published for these dimensions and collaborative vectors."""
    try:
        manifest = read_manifest(manifest_path)
    except (OSError, ValueError):
        return False
    return (
        manifest.get("format") == FORMAT
        and manifest.get("dim") == INDEX_DIM
        and manifest.get("factors_version", 0) == factors_version
    )


def changes_after(engine: Engine, rev: int) -> int:
    """How many items changed after revision ``rev`` (what a worker would hold in its overlay)."""
    with engine.connect() as conn:
        query = select(func.count()).where(items_table.c.rev > rev)
        return int(conn.execute(query).scalar_one())


@contextlib.contextmanager
def builder_lock(manifest_path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the machine's snapshot-builder lock; yields False (without waiting) if another
    process holds it and ``wait`` is False."""
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest_path.with_suffix(".lock"), "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure(
    engine: Engine,
    manifest_path: Path,
    factors: ItemFactors,
    *,
    max_behind: int | None = None,
    progress: bool = False,
) -> Snapshot:
    """The published snapshot for ``factors``, building it first (under the machine's lock) if
    there is none, or if it is more than ``max_behind`` changes behind the catalog."""

    def usable() -> bool:
        if not is_current(manifest_path, factors.version):
            return False
        if max_behind is None:
            return True
        return changes_after(engine, read_manifest(manifest_path)["rev"]) <= max_behind

    if not usable():
        with builder_lock(manifest_path):
            if not usable():  # another process may have built it while we waited
                build(engine, manifest_path, factors, progress=progress)
    return Snapshot.open(manifest_path)


def build(
    engine: Engine, manifest_path: Path, factors: ItemFactors, *, progress: bool = False
) -> Path:
    """Read the whole catalog, write a new snapshot beside ``manifest_path``, publish it, and
    return its directory. Call under ``builder_lock``."""
    from tqdm import tqdm
    from usearch.index import Index

    started = time.perf_counter()
    stem = f"snapshot-{int(time.time() * 1000)}-{os.getpid()}"
    tmp = manifest_path.parent / f".{stem}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ann = Index(
        ndim=INDEX_DIM,
        metric="ip",
        dtype=STORAGE,
        connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD,
    )
    parts = _Parts()
    embedder = ContentEmbedder(DIM)
    with engine.connect() as conn:
        total = count_live_items(conn)
        bar = tqdm(total=total, desc="snapshot", unit="item", disable=not progress)
        for rows in changes_since(conn, 0):
            keys, vectors = parts.add(rows, embedder)
            if len(keys):
                collab, counts = factors.lookup(keys)
                # Every core inserts. Not in a thread beside the next chunk's reading: usearch's
                # insertions wait for the GIL between vectors, so Python work running meanwhile
                # slows them several times over (100,000 vectors: 76 s beside a loop, 3-16 alone).
                ann.add(keys.astype(np.uint64), blend(vectors, collab, counts), threads=0)
            bar.update(len(rows))
        bar.close()
    ann.save(str(tmp / "ann.usearch"))
    live = len(ann)
    del ann
    meta = parts.write(tmp)
    meta.update(rev=parts.rev, factors_version=factors.version, dim=INDEX_DIM, live=live)
    meta.update(connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD)  # not kept in the file
    (tmp / "meta.json").write_text(json.dumps(meta))
    os.replace(tmp, manifest_path.parent / stem)
    _publish(manifest_path, stem, meta)
    log.info(
        "snapshot %s: %d items (%d live) at revision %d in %.1f s",
        stem,
        parts.count,
        live,
        parts.rev,
        time.perf_counter() - started,
    )
    return manifest_path.parent / stem


def _publish(manifest_path: Path, stem: str, meta: dict[str, Any]) -> None:
    previous = None
    with contextlib.suppress(OSError, ValueError):
        previous = read_manifest(manifest_path).get("snapshot")
    manifest = {
        "format": FORMAT,
        "snapshot": stem,
        "rev": meta["rev"],
        "dim": meta["dim"],
        "live": meta["live"],
        "factors_version": meta["factors_version"],
    }
    tmp = manifest_path.with_name(manifest_path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, manifest_path)
    # Keep the previous snapshot (a worker may be opening it right now); older ones go once
    # no one has had a minute to start mapping them. Mapped files stay readable after unlink.
    for old in manifest_path.parent.glob("snapshot-*"):
        if old.name not in (stem, previous) and time.time() - old.stat().st_mtime > 60:
            shutil.rmtree(old, ignore_errors=True)
    for old in manifest_path.parent.glob(f"{manifest_path.stem}-*"):  # the hnswlib-era files
        old.unlink(missing_ok=True)


class _Parts:
    """The catalog read so far, chunk by chunk, in compact arrays rather than Python objects."""

    def __init__(self) -> None:
        self.rev = 0
        self.count = 0
        self.chunks: list[dict[str, Any]] = []
        self.blob_sizes = dict.fromkeys(STRINGS, 0)
        self.codes: dict[str, dict[str, int]] = {"category": {"": 0}, "brand": {"": 0}}

    def add(self, rows: Sequence[Any], embedder: ContentEmbedder) -> tuple[np.ndarray, np.ndarray]:
        """Take one chunk of the change feed; returns the live keys and their content vectors.

        The same rules as ``Catalog.apply``: a deleted item is unavailable, an out-of-stock one
        stays in the catalog but out of the index."""
        n = len(rows)
        chunk: dict[str, Any] = {"key": np.fromiter((r.key for r in rows), np.int64, n)}
        chunk["rev"] = np.fromiter((r.rev for r in rows), np.int64, n)
        chunk["created"] = np.fromiter(
            (0.0 if r.deleted else r.created_at for r in rows), np.float64, n
        )
        chunk["price"] = np.fromiter(
            (0.0 if r.deleted else np.nan if r.price is None else r.price for r in rows),
            np.float32,
            n,
        )
        chunk["available"] = np.fromiter(
            (bool(r.available) and not r.deleted for r in rows), bool, n
        )
        cats, brands = self.codes["category"], self.codes["brand"]
        chunk["category"] = np.fromiter(
            (0 if r.deleted else cats.setdefault(r.category, len(cats)) for r in rows), np.int32, n
        )
        chunk["brand"] = np.fromiter(
            (0 if r.deleted else brands.setdefault(r.brand, len(brands)) for r in rows), np.int32, n
        )
        features, embed = [], []
        for row in rows:
            if row.deleted:  # a deleted item keeps its id (key_of) and nothing else
                features.append("")
                continue
            tokens = item_tokens(row.category, row.brand, row.price, row.attributes)
            features.append(scorer_features(row.key, tokens))
            if row.available:
                embed.append((tokens, title_words(row.title)))
        titles = ["" if r.deleted else r.title for r in rows]
        for name, values in (
            ("item_ids", [None if r.deleted else r.item_id for r in rows]),
            ("titles", titles),
            ("features", features),
        ):
            blob, spans = pack_strings(values, self.blob_sizes[name])
            self.blob_sizes[name] += len(blob)
            chunk[name] = (blob, spans)
        named = [r for r in rows if not r.deleted]
        chunk["hash"] = np.fromiter((stable_hash(r.item_id) for r in named), np.uint64, len(named))
        chunk["hash_key"] = np.fromiter((r.key for r in named), np.int64, len(named))
        self.chunks.append(chunk)
        self.rev = max(self.rev, int(chunk["rev"].max()))
        self.count += n
        live = chunk["key"][chunk["available"]]
        vectors = embedder.embed_many(embed) if embed else np.zeros((0, DIM), np.float32)
        return live, vectors

    def write(self, where: Path) -> dict[str, Any]:
        """Write every column into ``where``; returns the metadata to keep beside them."""
        size = max((int(c["key"].max()) + 1 for c in self.chunks), default=0)
        capacity = size + headroom(size)
        for name in NUMERIC:
            column = np.zeros(capacity, dtype=_DTYPES[name])
            for chunk in self.chunks:
                column[chunk["key"]] = chunk[name]
            np.save(where / f"{name}.npy", column)
        for name in STRINGS:
            spans = np.zeros((capacity, 2), dtype=np.int64)
            with open(where / f"{name}.blob.npy", "wb") as handle:
                np.lib.format.write_array_header_1_0(
                    handle,
                    {"descr": "|u1", "fortran_order": False, "shape": (self.blob_sizes[name],)},
                )
                for chunk in self.chunks:
                    blob, chunk_spans = chunk[name]
                    handle.write(blob)
                    spans[chunk["key"]] = chunk_spans
            np.save(where / f"{name}.spans.npy", spans)
        hashes = np.concatenate([np.zeros(0, np.uint64), *(c["hash"] for c in self.chunks)])
        hash_keys = np.concatenate([np.zeros(0, np.int64), *(c["hash_key"] for c in self.chunks)])
        in_index = np.zeros(capacity, dtype=bool)
        for chunk in self.chunks:
            in_index[chunk["key"]] = chunk["available"]
        np.save(where / "in_index.npy", in_index)
        order = np.argsort(hashes, kind="stable")
        np.save(where / "id_hashes.npy", hashes[order])
        np.save(where / "id_keys.npy", hash_keys[order])
        return {
            "items": self.count,
            "capacity": capacity,
            "category_names": _names(self.codes["category"]),
            "brand_names": _names(self.codes["brand"]),
        }


def _names(codes: dict[str, int]) -> list[str]:
    names = [""] * len(codes)
    for name, code in codes.items():
        names[code] = name
    return names


def factors_at(engine: Engine, version: int) -> ItemFactors:
    """The stored collaborative vectors of ``version`` (none for version 0)."""
    from slatebandit.logging.embeddings import load_factors

    if version == 0:
        return ItemFactors.empty()
    with engine.connect() as conn:
        keys, vectors, counts = load_factors(conn, version)
    return ItemFactors(version, keys, vectors, counts)
