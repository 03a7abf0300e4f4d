"""Content features of an item, and deterministic content embeddings built from them.

The same tokens feed the HNSW embedding and the bandit's item namespace, so "similar" in
retrieval and "similar" to the scorer mean the same thing. Embeddings need no model download:
every token maps to a fixed pseudo-random direction (seeded by a hash of the token, identical
on every machine), and an item is the weighted, normalised sum of its tokens' directions.
Items that share a category, brand or price band therefore sit close together.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DIM = 64
_UNSAFE = re.compile(r"[\s|:]+")  # VW's separators: whitespace, namespace bar, value colon
_WORD = re.compile(r"[a-z0-9]{3,}")
_WEIGHTS = {"c": 3.0, "b": 1.5, "p": 1.0, "a": 1.0, "w": 1.0}
_CACHE_LIMIT = 200_000


def price_bucket(price: float | None) -> int:
    """Log-scale price band: 0 for unknown, then one band per doubling."""
    if price is None or price <= 0:
        return 0
    return 1 + int(math.log2(1.0 + price))


@functools.lru_cache(maxsize=65_536)  # catalog values repeat: categories, brands, colours
def clean(token: str) -> str:
    return _UNSAFE.sub("_", token.strip().lower())[:64]


def item_tokens(
    category: str, brand: str, price: float | None, attributes: Mapping[str, object]
) -> list[str]:
    """Structured content tokens, e.g. ``c=shoes c=shoes/sneakers b=acme p=6 a=color=red``.

    A category path ``a/b/c`` yields one token per prefix so siblings share a parent.
    """
    tokens = []
    parts = [clean(p) for p in category.split("/") if p.strip()]
    tokens += ["c=" + "/".join(parts[: i + 1]) for i in range(len(parts))]
    if brand.strip():
        tokens.append("b=" + clean(brand))
    tokens.append(f"p={price_bucket(price)}")
    tokens += [f"a={clean(str(k))}={clean(str(v))}" for k, v in sorted(attributes.items())]
    return tokens


def scorer_features(key: int, tokens: Sequence[str]) -> str:
    """An item's static features for the scorer: its id token, then its content tokens."""
    return " ".join([f"k{key}", *tokens])


def snapshot_features(key: int, fields: Mapping[str, Any]) -> str:
    """The scorer features of an item revision, from its snapshot (``logging.items.snapshot``):
    what the learner and replay rebuild for a logged candidate."""
    tokens = item_tokens(fields["category"], fields["brand"], fields["price"], fields["attributes"])
    return scorer_features(key, tokens)


def title_words(title: str) -> list[str]:
    return ["w=" + w for w in dict.fromkeys(_WORD.findall(title.lower()))]


class ContentEmbedder:
    """Token directions, kept as rows of one table; ``embed`` turns token lists into unit vectors.

    ``embed_many`` gives each row exactly the bytes ``embed`` gives it (a test holds them equal):
    it adds the same float32 terms in the same order, one term position at a time across all
    rows instead of one row at a time, so a chunk of items costs a few numpy calls per position
    rather than a few per token."""

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        # A worker embeds catalog changes while a new index is built on another thread, and
        # growing the table is no atomic step: a row written into the old table meanwhile
        # would be lost from the new one.
        self._lock = threading.Lock()
        self._forget()

    def _forget(self) -> None:
        # Row 0 is a zero direction of weight 0: the padding of rows with fewer terms, whose
        # product +0.0 leaves a sum's bits unchanged.
        self._rows: dict[str, int] = {}
        self._table = np.zeros((1024, self.dim), dtype=np.float32)
        self._weights = np.zeros(1024, dtype=np.float32)  # as a token: NaN if not one

    def _row(self, token: str) -> int:
        row = self._rows.get(token)
        if row is None:
            row = len(self._rows) + 1
            if row == len(self._table):
                self._table = np.concatenate([self._table, np.empty_like(self._table)])
                self._weights = np.concatenate([self._weights, np.empty_like(self._weights)])
            seed = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
            self._table[row] = np.random.default_rng(seed).standard_normal(self.dim)
            self._weights[row] = _WEIGHTS.get(token[:1], np.nan)
            self._rows[token] = row
        return row

    def _bound(self) -> None:
        """Forget every direction once there are too many (free-text titles keep adding words);
        never in the middle of a call, whose rows refer to the table."""
        if len(self._rows) >= _CACHE_LIMIT:
            self._forget()

    def token_vector(self, token: str) -> np.ndarray:
        with self._lock:
            self._bound()
            return self._table[self._row(token)]  # a view: a row is written once

    def embed(self, tokens: Sequence[str], words: Sequence[str] = ()) -> np.ndarray:
        total = np.zeros(self.dim, dtype=np.float32)
        for token in tokens:
            total += _WEIGHTS[token[0]] * self.token_vector(token)
        if words:  # the title counts as much as one strong token, however long it is
            scale = 1.5 / math.sqrt(len(words))
            for word in words:
                total += scale * self.token_vector(word)
        norm = float(np.linalg.norm(total))
        return total / norm if norm > 0 else total

    def embed_many(self, rows: Sequence[tuple[Sequence[str], Sequence[str]]]) -> np.ndarray:
        """``embed`` of every row, stacked (byte for byte)."""
        with self._lock:
            return self._embed_many(rows)

    def _embed_many(self, rows: Sequence[tuple[Sequence[str], Sequence[str]]]) -> np.ndarray:
        self._bound()
        n = len(rows)
        flat = list(itertools.chain.from_iterable(itertools.chain(t, w) for t, w in rows))
        try:
            terms = [self._rows[term] for term in flat]
        except KeyError:  # new tokens: give them rows
            terms = [self._row(term) for term in flat]
        tokens = np.fromiter((len(t) for t, _ in rows), dtype=np.int64, count=n)
        words = np.fromiter((len(w) for _, w in rows), dtype=np.int64, count=n)
        lengths = tokens + words
        # Row i's j-th term goes to column j of an (items x terms) table, padded with row 0.
        width = int(lengths.max(initial=0))
        row_of = np.repeat(np.arange(n), lengths)
        column = np.arange(len(terms)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        ids = np.zeros((n, width), dtype=np.int64)
        ids[row_of, column] = terms
        scale = self._weights[ids]
        is_word = (np.arange(width) >= tokens[:, None]) & (np.arange(width) < lengths[:, None])
        if np.isnan(scale[~is_word]).any():  # as ``embed`` fails on a token of no known kind
            raise KeyError(next(t[:1] for ts, _ in rows for t in ts if t[:1] not in _WEIGHTS))
        # ``embed``'s 1.5 / sqrt(words) in float64, rounded to float32 as its product rounds it
        per_word = 1.5 / np.sqrt(np.maximum(words, 1).astype(np.float64))
        scale = np.where(is_word, per_word.astype(np.float32)[:, None], scale)
        out = np.zeros((n, self.dim), dtype=np.float32)
        term = np.empty_like(out)
        for j in range(width):  # in ``embed``'s order: float32 sums depend on it
            np.take(self._table, ids[:, j], axis=0, out=term)
            term *= scale[:, j, None]
            out += term
        # ``np.linalg.norm`` of a vector is sqrt(v.dot(v)): the same dot per row, then one sqrt.
        norms = np.sqrt(np.fromiter((row.dot(row) for row in out), dtype=np.float32, count=n))
        nonzero = norms > 0
        out[nonzero] /= norms[nonzero, None]
        return out
