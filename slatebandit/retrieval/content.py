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
import math
import re
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
    """Token directions, cached; ``embed`` turns token lists into unit vectors."""

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self._cache: dict[str, np.ndarray] = {}

    def token_vector(self, token: str) -> np.ndarray:
        vector = self._cache.get(token)
        if vector is None:
            seed = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
            vector = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[token] = vector
        return vector

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
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for i, (tokens, words) in enumerate(rows):
            out[i] = self.embed(tokens, words)
        return out
