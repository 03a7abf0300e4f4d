"""Candidate generation: several generators, merged, deduplicated, filtered and capped.

Generators, in merge priority:
    similar  item-to-item neighbours of the items the shopper just touched
    session  nearest neighbours of the shopper's time-decayed session vector
    popular  time-decayed popular items
    fresh    the newest items that have rarely been shown
    context  what shoppers in the same context (device, page, hour) engaged with: a brand-new
             shopper's slate is popular, contextual, fresh and (by its slots) diverse; within
             a merge round it comes before popular (``PRIORITY``)

Lists are merged round-robin (``SHARES``) so every generator is represented near the top; a
candidate keeps the first generator that proposed it as its ``source`` and the set of all that
did as ``flags``.
Excluded, unavailable and purchased items never get in, nor items outside the request's
``Filters``: with a filter, every generator proposes from the allowed items only
(``filters.Allowed``), so the slate is as full as the allowed items permit.
A placement (``recommender.placements``) may put a *lead* of its own before every generator:
an item page's neighbours, a cart's bought-together items.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from slatebandit.retrieval.content import clean
from slatebandit.retrieval.filters import MAX_OVERFETCH, Allowed
from slatebandit.retrieval.store import ItemStore
from slatebandit.retrieval.user_state import UserState

# The last source is no generator: ``rule`` marks an item a merchandising rule brought in
# (``slatebandit.merchandising``), which no generator proposed (its flags are 0).
SOURCES = ("similar", "session", "popular", "fresh", "context", "rule")
SIMILAR, SESSION, POPULAR, FRESH, CONTEXT = (1 << i for i in range(5))
# Items each generator places per merge round. An untrained model ties every score, and a trained
# one ties items it has never seen that share their content tokens: ties go to retrieval order,
# so these shares matter. Measured: weighting similar and session 3 to 1 raised the share of a
# new shopper's next slate near their first click from 0.39 to 0.59 (tests/test_cold_start.py),
# but cut the simulator's learned CTR after 8 windows from 0.113 to 0.077, below the popular
# baseline's margin (tests/test_simulate.py); 2 to 1 gave 0.082. Even shares it is.
SHARES = (1, 1, 1, 1, 1)
# Order within a round, by generator: context goes before the global popular list, so an item
# both propose is credited to the context. (Flag bits keep the order of SOURCES, as logged.)
PRIORITY = (0, 1, 3, 4, 2)
MAX_CONTEXT = 8  # context tokens a request contributes


@dataclass(frozen=True)
class Candidates:
    keys: np.ndarray  # int64 item keys, in merge order
    flags: np.ndarray  # uint8 bitmask of the generators that proposed each one
    sources: np.ndarray  # uint8 index into SOURCES of the first generator
    session: np.ndarray | None = None  # the unit session vector they were retrieved around

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
    context: int = 50


def generate(
    store: ItemStore,
    user: UserState | None,
    session_keys: Sequence[int],
    exclude_keys: Collection[int],
    limit: int,
    quotas: Quotas = Quotas(),
    allowed: Allowed | None = None,
    excluded: Collection[int] = (),
    context: Sequence[str] = (),
    lead: np.ndarray | None = None,
) -> Candidates:
    """Candidates for one request; ``excluded``: what the user's state keeps out (items acted
    on under the exclusion rules, ``UserState.excluded``); ``context``: the request's context
    tokens (``context_tokens``); ``lead``: a placement's own proposals, which go before every
    generator's (``led_by``)."""
    catalog = store.catalog
    index = store.index
    session_keys = [key for key in session_keys if store.index.contains(key)]
    touched = [*session_keys, *(user.recent_keys(quotas.similar_items) if user else [])]
    recent = [key for key in dict.fromkeys(touched) if store.index.contains(key)]
    recent = recent[: quotas.similar_items]
    blocked = set(exclude_keys) | set(recent) | set(excluded)

    proposals: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(SOURCES)

    if recent:
        k = quotas.similar_per_item + 1  # +1: the seed itself
        if allowed is None:
            labels = index.neighbours_of(recent, k)  # kept between slates
        else:
            labels = allowed.neighbours(index, index.live_vectors(recent)[1], k)
        proposals[SOURCES.index("similar")] = labels.T.ravel()  # every seed's best first
    session = session_vector(store, user, session_keys)
    if session is not None:
        proposals[SOURCES.index("session")] = (
            index.nearest(session, quotas.session)  # kept between slates
            if allowed is None
            else allowed.neighbours(index, session, quotas.session)[0]
        )
    if allowed is None:
        proposals[SOURCES.index("popular")] = catalog.popular[: quotas.popular]
        fresh = catalog.fresh_keys(quotas.fresh)
    else:
        proposals[SOURCES.index("popular")] = allowed.popular(catalog, quotas.popular)
        fresh = catalog.fresh_keys(quotas.fresh, allowed.mask)
    proposals[SOURCES.index("fresh")] = np.asarray(fresh, dtype=np.int64)
    if context:
        quota = quotas.context if allowed is None else quotas.context * MAX_OVERFETCH
        proposals[SOURCES.index("context")] = catalog.context_popular(context, quota)
    usable = catalog.available if allowed is None else allowed.mask
    merged = merge(proposals, usable, blocked, limit)
    if lead is not None and len(lead):
        # The lead alone through the same merge: usable, not blocked, each key once, in order.
        head = merge([lead], usable, blocked, limit, shares=(1,)).keys
        merged = led_by(head, merged, limit)
    return dataclasses.replace(merged, session=session)


def merge(
    proposals: Sequence[np.ndarray],
    available: np.ndarray,
    blocked: Collection[int],
    limit: int,
    shares: Sequence[int] = SHARES,
) -> Candidates:
    """Weighted round-robin merge of per-generator lists (index = generator, in priority order).

    Each list is first cleared of unavailable, blocked and repeated keys, so a dropped
    proposal costs its generator nothing. Then round r takes proposals r * share to
    (r + 1) * share - 1 of each generator, in ``PRIORITY`` order; a key keeps the first
    generator that proposed it as its source and all that did as flags; at most ``limit`` are
    kept.
    """
    sizes = [len(p) for p in proposals]
    keys = np.concatenate([np.asarray(p, dtype=np.int64) for p in proposals])
    generator = np.repeat(np.arange(len(proposals), dtype=np.uint8), sizes)
    # Every list at once: drop unavailable and blocked keys, then each generator's repeats.
    usable = (keys >= 0) & (keys < len(available))
    usable[usable] = available[keys[usable]]
    if blocked:
        usable &= _outside(keys, blocked)
    keys, generator = keys[usable], generator[usable]
    if len(keys) == 0:
        return Candidates(np.empty(0, np.int64), np.empty(0, np.uint8), np.empty(0, np.uint8))
    _, first = np.unique(generator.astype(np.int64) * len(available) + keys, return_index=True)
    first.sort()  # each generator's first proposal of each key, in proposal order
    keys, generator = keys[first], generator[first]
    counts = np.bincount(generator, minlength=len(proposals))
    position = np.arange(len(keys)) - np.repeat(np.cumsum(counts) - counts, counts)
    rounds = position // np.asarray(shares)[generator]
    order = np.lexsort((position, np.asarray(PRIORITY)[generator], rounds))
    keys, generator = keys[order], generator[order]

    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    flags = np.zeros(len(first), dtype=np.uint8)
    np.bitwise_or.at(flags, inverse, (1 << generator).astype(np.uint8))
    firsts = np.sort(first)[:limit]  # positions, in merged order, of each key's first proposal
    return Candidates(keys=keys[firsts], flags=flags[inverse[firsts]], sources=generator[firsts])


def _outside(keys: np.ndarray, blocked: Collection[int]) -> np.ndarray:
    """Which of ``keys`` are not in ``blocked``: a binary search of the few blocked keys,
    sorted, for each key (375 keys against 12 blocked: ``np.isin`` 31 us, this 5.4)."""
    ordered = np.sort(np.fromiter(blocked, dtype=np.int64, count=len(blocked)))
    at = np.searchsorted(ordered, keys)
    np.minimum(at, len(ordered) - 1, out=at)
    return ordered[at] != keys


def led_by(head: np.ndarray, rest: Candidates, limit: int) -> Candidates:
    """``head`` (item keys, usable and distinct) first, then what ``rest`` holds besides, at
    most ``limit`` in all. ``head`` is a placement's lead, credited to the similar generator:
    it is items like the ones the shopper is looking at. An item in both keeps its place in
    ``head`` and gains the flags ``rest`` gave it (fresh, say, which makes it explorable)."""
    again = np.isin(rest.keys, head)
    flags = np.full(len(head), SIMILAR, dtype=np.uint8)
    if again.any():
        order = np.argsort(head)
        at = order[np.searchsorted(head, rest.keys[again], sorter=order)]
        np.bitwise_or.at(flags, at, rest.flags[again])
    kept = ~again
    similar = np.full(len(head), SOURCES.index("similar"), dtype=np.uint8)
    return Candidates(
        keys=np.concatenate([head, rest.keys[kept]])[:limit],
        flags=np.concatenate([flags, rest.flags[kept]])[:limit],
        sources=np.concatenate([similar, rest.sources[kept]])[:limit],
    )


def session_vector(
    store: ItemStore, user: UserState | None, session_keys: Sequence[int]
) -> np.ndarray | None:
    """The shopper's unit session vector: their time-decayed state plus the request's session
    items (None if there is neither)."""
    vector = None if user is None else user.session_vector
    if vector is not None and vector.shape != (store.index.dim,):
        vector = None  # built in another embedding space (an older version's index)
    if session_keys:
        request = store.index.live_vectors(list(session_keys))[1].sum(axis=0)
        vector = request if vector is None else vector + request
    if vector is None or not np.any(vector):
        return None
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def context_tokens(context: Mapping[str, object]) -> tuple[str, ...]:
    """The request context as tokens for the context generator, at most ``MAX_CONTEXT``."""
    tokens = [f"{clean(str(name))}={clean(str(value))}" for name, value in context.items()]
    return tuple(sorted(tokens)[:MAX_CONTEXT])
