"""Candidate generation: several generators, merged, deduplicated, filtered and capped.

Generators, in merge priority:
    similar  item-to-item neighbours of the items the shopper just touched
    session  nearest neighbours of the shopper's time-decayed session vector
    popular  time-decayed popular items
    fresh    the newest items that have rarely been shown

Lists are merged round-robin so every generator is represented near the top; a candidate keeps
the first generator that proposed it as its ``source`` and the set of all that did as ``flags``.
Excluded, unavailable and purchased items never get in.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from slatebandit.retrieval.store import ItemStore
from slatebandit.retrieval.user_state import UserState

SOURCES = ("similar", "session", "popular", "fresh")
SIMILAR, SESSION, POPULAR, FRESH = (1 << i for i in range(len(SOURCES)))


@dataclass(frozen=True)
class Candidates:
    keys: np.ndarray  # int64 item keys, in merge order
    flags: np.ndarray  # uint8 bitmask of the generators that proposed each one
    sources: np.ndarray  # uint8 index into SOURCES of the first generator

    def __len__(self) -> int:
        return len(self.keys)

    def source_names(self) -> list[str]:
        return [SOURCES[s] for s in self.sources]


@dataclass(frozen=True)
class Quotas:
    """How many items each generator proposes (before deduplication and filtering)."""

    similar_per_item: int = 20
    similar_items: int = 5
    session: int = 100
    popular: int = 100
    fresh: int = 20


def generate(
    store: ItemStore,
    user: UserState | None,
    session_keys: Sequence[int],
    exclude_keys: Collection[int],
    limit: int,
    quotas: Quotas = Quotas(),
) -> Candidates:
    catalog = store.catalog
    session_keys = [key for key in session_keys if store.index.contains(key)]
    touched = [*session_keys, *(user.recent_keys(quotas.similar_items) if user else [])]
    recent = [key for key in dict.fromkeys(touched) if store.index.contains(key)]
    recent = recent[: quotas.similar_items]
    blocked = set(exclude_keys) | set(recent)
    if user is not None:
        blocked |= user.purchased

    lists: list[tuple[int, Sequence[int]]] = []
    if recent:
        seeds = store.index.vectors(np.asarray(recent))
        labels, _ = store.index.query(seeds, quotas.similar_per_item + 1)
        lists.append((SIMILAR, _interleave(labels)))
    session = _session_vector(store, user, session_keys)
    if session is not None:
        labels, _ = store.index.query(session, quotas.session)
        lists.append((SESSION, labels[0].tolist()))
    lists.append((POPULAR, catalog.popular[: quotas.popular].tolist()))
    lists.append((FRESH, catalog.fresh_keys(quotas.fresh)))

    order: dict[int, int] = {}  # key -> index into out lists
    keys: list[int] = []
    flags: list[int] = []
    sources: list[int] = []
    available = catalog.available
    cursors = [0] * len(lists)
    while len(keys) < limit and any(c < len(ls) for c, (_, ls) in zip(cursors, lists, strict=True)):
        for g, (flag, proposed) in enumerate(lists):
            if cursors[g] >= len(proposed):
                continue
            key = int(proposed[cursors[g]])
            cursors[g] += 1
            if key in order:
                flags[order[key]] |= flag
            elif (
                key not in blocked and key < len(available) and available[key] and len(keys) < limit
            ):
                order[key] = len(keys)
                keys.append(key)
                flags.append(flag)
                sources.append(flag.bit_length() - 1)
    return Candidates(
        keys=np.asarray(keys, dtype=np.int64),
        flags=np.asarray(flags, dtype=np.uint8),
        sources=np.asarray(sources, dtype=np.uint8),
    )


def _interleave(rows: np.ndarray) -> list[int]:
    """Row-wise neighbour lists merged column by column: every seed's best neighbours first."""
    return rows.T.ravel().tolist() if rows.size else []


def _session_vector(
    store: ItemStore, user: UserState | None, session_keys: Sequence[int]
) -> np.ndarray | None:
    vector = None if user is None else user.session_vector
    if session_keys:
        request = store.index.vectors(np.asarray(session_keys)).sum(axis=0)
        vector = request if vector is None else vector + request
    if vector is None or not np.any(vector):
        return None
    return (vector / np.linalg.norm(vector)).astype(np.float32)
