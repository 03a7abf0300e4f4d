"""The embedding job: interactions in; a new version of collaborative item vectors, and every
user's batch features (``retrieval.profiles``), out.

Run by ``slatebandit train-embeddings`` or, every ``SLATEBANDIT_EMBEDDING_INTERVAL`` seconds,
by one ``serve`` process at a time (a database lease). Every serving process then notices the
new version (``follow_factors``), builds its index with it beside the serving one and swaps it
in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Engine

from slatebandit.config import Settings
from slatebandit.logging.embeddings import (
    item_facts,
    latest_factors_version,
    load_factors,
    read_interactions,
    save_factors,
)
from slatebandit.logging.learning import take_lease
from slatebandit.logging.users import save_user_profiles
from slatebandit.retrieval.collab import ItemFactors, train_factors
from slatebandit.retrieval.profiles import batch_profiles
from slatebandit.retrieval.store import ItemStore

log = logging.getLogger(__name__)
LEASE = "embeddings"
T = TypeVar("T")


@dataclass(frozen=True)
class Trained:
    version: int
    interactions: int
    items: int
    seconds: float


def train_embeddings(  # type: ignore[no-untyped-def]
    engine: Engine,
    settings: Settings,
    progress=None,
    say: Callable[[str], None] = lambda stage: None,
) -> Trained | None:
    """Train and store a new version; None when the log holds no weighted interaction.
    ``progress(n)`` counts interactions as they are read; ``say`` names each later stage."""
    started = time.perf_counter()
    users, items, weights, kinds = read_interactions(engine, settings.interaction_weights, progress)
    if len(items) == 0:
        return None
    say(f"user profiles from {len(items):,} interactions")
    profiles = batch_profiles(users, items, weights, kinds, item_facts(engine))
    with engine.begin() as conn:
        save_user_profiles(conn, profiles)
    say(f"fitting {settings.embedding_method} item vectors")
    factors = train_factors(
        users, items, weights, method=settings.embedding_method, seed=settings.seed or 0
    )
    say(f"saving {len(factors.keys):,} item vectors")
    seconds = time.perf_counter() - started
    version = save_factors(
        engine,
        method=settings.embedding_method,
        interactions=len(items),
        seconds=seconds,
        keys=factors.keys,
        vectors=factors.vectors,
        counts=factors.counts,
    )
    log.info(
        "embeddings: version %d from %d interactions over %d items in %.1f s",
        version,
        len(items),
        len(factors.keys),
        seconds,
    )
    return Trained(version, len(items), len(factors.keys), seconds)


def latest_factors(engine: Engine) -> ItemFactors:
    with engine.connect() as conn:
        version = latest_factors_version(conn)
        if version == 0:
            return ItemFactors.empty()
        keys, vectors, counts = load_factors(conn, version)
    return ItemFactors(version, keys, vectors, counts)


BACKGROUND_NICENESS = 10  # a rebuild yields the CPU to serving (Linux threads have their own)


async def in_background(work: Callable[..., T], *args: object) -> T:
    """Run ``work`` on a thread of its own at a lower CPU priority, so that a long rebuild on a
    2-core machine takes the cycles serving leaves, not the other way round."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
        value, error = None, None
        try:
            value = work(*args)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
            loop.call_soon_threadsafe(_settle, result, value, error)

    threading.Thread(target=run, name="background-build", daemon=True).start()
    return await result


def _settle(future: asyncio.Future, value: object, error: BaseException | None) -> None:  # type: ignore[type-arg]
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def newest_version(engine: Engine) -> int:
    with engine.connect() as conn:
        return latest_factors_version(conn)


async def follow_factors(engine: Engine, store: ItemStore) -> bool:
    """Build and swap in the index for a newer version of the vectors, if there is one."""
    if await asyncio.to_thread(newest_version, engine) <= store.factors.version:
        return False
    factors = await asyncio.to_thread(latest_factors, engine)
    started = time.perf_counter()
    index = await in_background(store.build_with, factors)
    await store.swap_in(index, factors)
    log.info(
        "embeddings: serving version %d (%d items rebuilt in %.1f s)",
        factors.version,
        len(index),
        time.perf_counter() - started,
    )
    return True


def train_if_leased(engine: Engine, settings: Settings, holder: str) -> Trained | None:
    """The scheduled job in ``serve``: train only if no other process did this interval."""
    with engine.begin() as conn:
        ttl = settings.embedding_interval * 0.9
        if not take_lease(conn, LEASE, holder, time.time(), ttl):
            return None
    return train_embeddings(engine, settings)
