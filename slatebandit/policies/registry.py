"""Serving follows the registry: the promoted version is loaded beside serving, then swapped in.

Loading reads the model bytes and builds a VW workspace on a worker thread; the swap is one
attribute assignment, so a request in flight keeps the scorer it started with (it reads
``policy.scorer`` once). VW holds the GIL while it builds a workspace, though, so the worker's
requests do wait for a load: a version that served as a canary is taken from the canary
(``loaded``), not loaded again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy import Connection, Engine

from slatebandit.bandit import VWScorer, trim_freed_memory
from slatebandit.errors import NotFound
from slatebandit.logging.models import champion, get_version, model_bytes
from slatebandit.policies.vw import VWPolicy

log = logging.getLogger(__name__)


Held = Callable[[int], VWScorer | None]


def load_champion(engine: Engine, serving: int, loaded: Held | None = None) -> VWScorer | None:
    """The champion's scorer if it is not the version ``serving``, else None; ``loaded``
    returns a scorer of a version this server holds already (``PolicySet.loaded``)."""
    with engine.connect() as conn:
        version = champion(conn)
        if version is None or version == serving:
            return None
        held = None if loaded is None else loaded(version)
        return held if held is not None else load_version(conn, version)


def load_version(
    conn: Connection, version: int, field: str = "version", label: str | None = None
) -> VWScorer:
    """Model version ``version`` from the registry, ready to score: the one place a version is
    loaded (the champion, a ``vw@V`` policy, a replay target). NotFound naming ``field`` (its
    message starts with ``label``, default the field) if there is no such version, or its
    model was pruned."""
    info = get_version(conn, version)
    if info is None:
        raise NotFound(f"{label or field}: no model version {version}", field=field)
    scorer = VWScorer(info.vw_args, version=version, model_bytes=model_bytes(conn, version))
    return scorer.prepare()  # here, on the loading thread, not on a request's


async def follow_champion(engine: Engine, policy: VWPolicy, loaded: Held | None = None) -> bool:
    """Swap the champion into ``policy`` if it changed; True if it did."""
    scorer = await asyncio.to_thread(load_champion, engine, policy.scorer.version, loaded)
    if scorer is None:
        return False
    previous, policy.scorer = policy.scorer, scorer
    log.info("serving model version %d (was %d)", scorer.version, previous.version)
    del previous  # freed here unless a request in flight still scores with it
    await asyncio.to_thread(trim_freed_memory)
    return True
