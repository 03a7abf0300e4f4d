"""The recommender a serving worker holds: its parts, what it keeps in memory, and its verbs.

``Recommender.open(settings)`` builds the parts once per worker: the database engine and the
group-commit writer, the item store (catalog and hnswlib index), the champion policy and the
policies beside it (experiments, canaries, the Personalizer loops), and the learner process.
``start()`` runs the background jobs (``recommender.background``); ``close()`` stops them
and saves what must survive a restart.

The server (``slatebandit.server``) parses, authorises and encodes; in between it calls one
verb here: ``decide`` for a slate (``recommender.decide``), ``reward`` and ``event`` for
feedback (``recommender.feedback``), ``erase`` for a shopper. Every write goes through
``outage``: committed, or spooled while the database is away.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

from slatebandit.bandit import VWScorer, return_freed_memory, trim_freed_memory
from slatebandit.config import Settings
from slatebandit.errors import ConfigError, SlatebanditError
from slatebandit.logging import open_engine
from slatebandit.logging.engine import is_unavailable
from slatebandit.logging.privacy import Erased, erase_user
from slatebandit.personalizer.loops import Loops
from slatebandit.policies import PolicySet, VWPolicy, exploration_of, follow_champion
from slatebandit.policies.canary import CanaryBook
from slatebandit.policies.experiment_book import ExperimentBook
from slatebandit.recommender import feedback, shipping
from slatebandit.recommender.background import JOBS, start_jobs
from slatebandit.recommender.decide import Decision, SlateQuery, decide
from slatebandit.recommender.feedback import Logged
from slatebandit.recommender.state import Parts, index_path
from slatebandit.retrieval import ItemStore
from slatebandit.retrieval.embedding_job import latest_factors

log = logging.getLogger(__name__)

# How long the event loop may keep the GIL from a thread that wants it back (Python's default
# is 5 ms). The group commit's thread lets go of it at each system call and SQLite statement
# of a commit, and then waits that long for it each time the loop is busy: a one-slate commit
# took 21 ms against a busy loop, 2.6 ms at 0.5 ms, 0.4 ms against an idle one
# (`python -m benchmarks.group_commit`; `benchmarks/README.md`).
GIL_SWITCH_SECONDS = 0.0005


class Recommender(Parts):
    """A serving worker's recommender: ``open``, ``start``, the verbs, ``close``."""

    _tasks: tuple[asyncio.Task[None], ...] = ()  # the background jobs, once started

    @classmethod
    async def open(cls, settings: Settings) -> Recommender:
        """Build every part from the database (slow parts on a thread), ready to ``start``."""
        return_freed_memory()  # before the models and the index: see its docstring
        engine = open_engine(settings.database_url)
        factors = await asyncio.to_thread(latest_factors, engine)
        store = await asyncio.to_thread(
            ItemStore.open,
            engine,
            index_path(settings),
            fresh_impressions=settings.fresh_impressions,
            ef=settings.hnsw_ef,
            factors=factors,
        )
        policy = VWPolicy(
            VWScorer(settings.vw_args).prepare(),
            exploration_of(settings),
            settings.explore_slots,
            settings.diverse_slots,
        )
        await follow_champion(engine, policy)  # a restart serves the promoted version
        policies = PolicySet(settings, engine, policy)
        try:
            await asyncio.to_thread(policies.get, settings.policy)
        except SlatebanditError as exc:
            raise ConfigError(f"SLATEBANDIT_POLICY: {exc.message}", field="policy") from None
        experiments = ExperimentBook(engine, prepare=policies.get)
        await asyncio.to_thread(experiments.refresh)

        # An ended canary's model is dropped, unless an experiment arm serves it too.
        def forget(spec: str) -> None:
            running = experiments.running
            if running is None or spec not in {arm.policy for arm in running.arms}:
                policies.forget(spec)
                trim_freed_memory()  # on the refresh's thread, not the event loop

        canaries = CanaryBook(engine, prepare=policies.get, forget=forget)
        await asyncio.to_thread(canaries.refresh)
        loops = Loops(engine, settings.loops, settings.seed)
        await asyncio.to_thread(loops.refresh)
        recommender = cls(settings, engine, store, policy, policies, experiments, canaries, loops)
        await asyncio.to_thread(recommender.load_impressions)
        store.catalog.refresh_popular()
        return recommender

    async def start(self) -> None:
        """Open the writer and the spool, then start the background jobs."""
        await self.writer.start()
        await self.outage.spool.start()
        # The catalog and index are millions of long-lived objects; without this, every full
        # collection walks them all (a 120 ms pause at 1M items, measured by benchmarks/serve.py).
        gc.collect()
        gc.freeze()
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        self._tasks = await start_jobs(self, JOBS)
        log.info(
            "serving %d items from %s", len(self.store.index), self.engine.url.render_as_string()
        )

    async def close(self) -> None:
        """Stop the jobs, the replays and the learner; commit what is queued; save the index."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.evaluations.stop()
        await asyncio.gather(*self.loops.evaluations, return_exceptions=True)
        self.loops.evaluation_pool.shutdown()
        try:
            await asyncio.to_thread(self.learning.stop)
        except Exception as exc:  # the database is away: the leases lapse by themselves
            if not is_unavailable(exc):
                raise
            log.warning("learner stopped without its final checkpoint: database unreachable")
        await self.writer.stop()
        await self.outage.close()
        await asyncio.to_thread(self.store.save)
        if self.user_reader is not None:
            await self.user_reader.close()
        self.point_engine.dispose()
        self.engine.dispose()

    # The verbs the server calls ------------------------------------------------------------

    async def decide(self, query: SlateQuery) -> Decision:
        """A slate for ``query``, logged (``recommender.decide``)."""
        return await decide(self, query)

    async def reward(
        self,
        event_id: str,
        item_id: str,
        type: str,
        reward: float | None = None,
        value: float | None = None,
    ) -> Logged:
        """Reward an item of a slate, with its money ``value`` if any (``recommender.feedback``)."""
        return await feedback.reward(self, event_id, item_id, type, reward, value)

    async def event(self, user_id: str, item_id: str, type: str) -> Logged:
        """Something a shopper did with an item (``recommender.feedback``)."""
        return await feedback.event(self, user_id, item_id, type)

    async def watch(self) -> None:
        """Probe the database; once it answers, ship the spool (``recommender.shipping``)."""
        await shipping.watch(self)

    async def erase(self, user_id: str) -> Erased:
        """Erase a shopper (``logging.privacy``), and forget what this worker remembers of them."""
        key = self.user_key(user_id)
        erased = await self.writer.submit(lambda conn: erase_user(conn, key))
        self.users.drop(key)
        self.rotation.forget(key)
        for event_id in [e for e, d in self.decisions.items() if d.user_id == key]:
            del self.decisions[event_id]  # a reward for them must find the redacted decision
        return erased

    def health(self) -> dict[str, object]:
        health = self.outage.health()
        # Degraded: the database is away, or records wait in a spool to be shipped.
        away = health["database"] != "ok" or health["spool"]["segments"]  # type: ignore[index]
        running = self.experiments.running
        return {
            "status": "degraded" if away else "ok",
            **health,
            "items": len(self.store.index),
            "policy": self.settings.policy,
            "experiment": None if running is None else running.name,
            "model_version": self.policy.scorer.version,
            "embeddings_version": self.store.factors.version,
        }
