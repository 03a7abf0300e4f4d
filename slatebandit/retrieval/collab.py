"""Collaborative item vectors from the interaction log, and their blend with content vectors.

Training: a user x item matrix of weighted interactions (``SLATEBANDIT_EMBEDDING_WEIGHTS``),
log-damped, whose columns are scaled by 1 / sqrt(item interactions) so that popular items do
not own every direction. Its truncated SVD gives item vectors V * S: the right singular vectors
of a matrix are the eigenvectors of its co-occurrence matrix (W^T W), so this is the truncated
SVD of the popularity-normalised co-occurrence, computed from the interactions alone, in time
linear in their number. ``method="als"`` trains implicit-feedback ALS (the ``implicit``
library) instead; ``benchmarks/retrieval.py`` measures both (see the README).

Blending: the index holds, for every item, ``[sqrt(1 - a) * content, sqrt(a) * collab]`` with
``a = n / (n + BLEND_INTERACTIONS)`` for an item with n interactions. A new item (n = 0) is its
content vector, so it is found by content neighbours at once; as interactions accrue its
collaborative part takes over. Both parts are unit vectors, so the blend is too, and the content
part can be read back from it (``content_of``) when the collaborative part changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slatebandit.retrieval.content import DIM

COLLAB_DIM = 32
INDEX_DIM = DIM + COLLAB_DIM  # what the HNSW index holds
BLEND_INTERACTIONS = 5.0  # interactions at which an item is half content, half collaborative


@dataclass(frozen=True)
class ItemFactors:
    """Collaborative vectors of the items that had interactions."""

    version: int
    keys: np.ndarray  # int64 item keys, sorted
    vectors: np.ndarray  # float32 (n, COLLAB_DIM), unit rows
    counts: np.ndarray  # float64 interactions per item

    @classmethod
    def empty(cls) -> ItemFactors:
        return cls(0, np.zeros(0, np.int64), np.zeros((0, COLLAB_DIM), np.float32), np.zeros(0))

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(collab vectors, interaction counts) of ``keys``; zeros for items without any."""
        keys = np.asarray(keys, dtype=np.int64)
        vectors = np.zeros((len(keys), COLLAB_DIM), dtype=np.float32)
        counts = np.zeros(len(keys))
        if len(self.keys):
            at = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
            found = self.keys[at] == keys
            vectors[found] = self.vectors[at[found]]
            counts[found] = self.counts[at[found]]
        return vectors, counts


def share(counts: np.ndarray) -> np.ndarray:
    """The collaborative share ``a`` of an item's vector, from its interaction count."""
    counts = np.asarray(counts, dtype=np.float64)
    return counts / (counts + BLEND_INTERACTIONS)


def blend(content: np.ndarray, collab: np.ndarray, counts: np.ndarray) -> np.ndarray:
    a = share(counts)[:, None]
    return np.hstack([np.sqrt(1 - a) * content, np.sqrt(a) * collab]).astype(np.float32)


def content_of(vectors: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The content part of blended ``vectors`` built with these interaction ``counts``."""
    a = share(counts)[:, None]
    return (vectors[:, :DIM] / np.sqrt(1 - a)).astype(np.float32)


def train_factors(
    users: np.ndarray,
    items: np.ndarray,
    weights: np.ndarray,
    *,
    version: int = 0,
    dim: int = COLLAB_DIM,
    method: str = "svd",
    seed: int = 0,
) -> ItemFactors:
    """Item vectors from interactions (one user, item key and weight per interaction)."""
    from scipy.sparse import csr_matrix, diags

    if len(items) == 0:
        return ItemFactors.empty()
    keys, item_index = np.unique(np.asarray(items, dtype=np.int64), return_inverse=True)
    _, user_index = np.unique(np.asarray(users), return_inverse=True)
    matrix = csr_matrix(
        (np.asarray(weights, dtype=np.float64), (user_index, item_index)),
        shape=(int(user_index.max()) + 1, len(keys)),
    )
    matrix.sum_duplicates()
    counts = np.bincount(item_index, minlength=len(keys)).astype(np.float64)
    matrix.data = np.log1p(matrix.data)
    if method == "svd":
        vectors = _svd(matrix @ diags(1.0 / np.sqrt(counts)), dim, seed)
    elif method == "als":
        vectors = _als(matrix, dim, seed)
    else:
        raise ValueError(f"unknown embedding method {method!r}: svd or als")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.where(norms > 0, vectors / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
    if vectors.shape[1] < COLLAB_DIM:  # fewer items or users than dimensions
        vectors = np.pad(vectors, ((0, 0), (0, COLLAB_DIM - vectors.shape[1])))
    return ItemFactors(version, keys, vectors, counts)


def _svd(matrix, dim: int, seed: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    from scipy.sparse.linalg import svds

    k = min(dim, min(matrix.shape) - 1)
    if k < 1:
        return np.zeros((matrix.shape[1], 1))
    start = np.random.default_rng(seed).standard_normal(min(matrix.shape))
    _, singular, right = svds(matrix.astype(np.float64), k=k, v0=start, random_state=seed)
    return right.T * singular


def _als(matrix, dim: int, seed: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    import implicit
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit parallelises itself; BLAS threads fight it
        model = implicit.als.AlternatingLeastSquares(
            factors=dim, iterations=15, regularization=0.05, random_state=seed
        )
        model.fit(matrix.tocsr(), show_progress=False)
    return np.asarray(model.item_factors)
