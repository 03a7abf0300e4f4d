"""The Starlette app factory and its lifespan.

The lifespan owns every long-lived resource: the database engine, the item store (catalog and
hnswlib index), the VW model, the group-commit writer and the background tasks that keep the
catalog in step with the database. Handlers reach them as ``request.state.services``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import socket
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from slatebandit.bandit import Exploration, VWScorer
from slatebandit.config import Settings
from slatebandit.errors import (
    ConfigError,
    DatabaseUnavailable,
    MethodNotAllowed,
    NotFound,
    SlatebanditError,
)
from slatebandit.logging import GroupCommitWriter, open_engine
from slatebandit.logging.engine import is_unavailable
from slatebandit.logging.learning import release_lease
from slatebandit.personalizer.learner import LEASE as PERSONALIZER_LEASE
from slatebandit.personalizer.learner import PersonalizerLearner
from slatebandit.personalizer.loops import Loops
from slatebandit.policies import PolicySet, VWPolicy, follow_champion
from slatebandit.policies.experiment_book import ExperimentBook
from slatebandit.policies.learner import LEASE, Learner, hold_lease
from slatebandit.replay.gate import Verdict, judge_apart
from slatebandit.retrieval import ItemStore
from slatebandit.retrieval.embedding_job import follow_factors, latest_factors, train_if_leased
from slatebandit.server import experiments, privacy, routes
from slatebandit.server.codec import error_response, respond
from slatebandit.server.evaluations import Evaluations, post_evaluation, read_evaluation
from slatebandit.server.openapi import openapi_document
from slatebandit.server.personalizer import personalizer_app
from slatebandit.server.personalizer_admin import admin_routes
from slatebandit.server.personalizer_evaluations import evaluation_routes
from slatebandit.server.services import Services

log = logging.getLogger("slatebandit.server")
LEARN_SECONDS = 1.0  # the embedded learner looks for due decisions this often...
LEARN_BUDGET = 0.5  # ...and works at most this long each time, on its own thread


def index_path(settings: Settings) -> Path:
    return settings.data_dir / "index" / "items.json"


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
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
        exploration = Exploration(
            settings.exploration, settings.epsilon, settings.gamma, settings.temperature
        )
        policy = VWPolicy(
            VWScorer(settings.vw_args), exploration, settings.explore_slots, settings.diverse_slots
        )
        await follow_champion(engine, policy)  # a restart serves the promoted version
        policies = PolicySet(settings, engine, policy)
        try:
            await asyncio.to_thread(policies.get, settings.policy)
        except SlatebanditError as exc:
            raise ConfigError(f"SLATEBANDIT_POLICY: {exc.message}", field="policy") from None
        experiments = ExperimentBook(engine, prepare=policies.get)
        await asyncio.to_thread(experiments.refresh)
        writer = GroupCommitWriter(engine, max_batch=settings.commit_batch)
        services = Services(
            settings,
            engine,
            writer,
            store,
            policy,
            np.random.default_rng(settings.seed),
            policies,
            experiments,
        )
        services.evaluations = Evaluations(engine, settings)
        services.loops = Loops(engine, settings.loops, settings.seed)
        await asyncio.to_thread(services.loops.refresh)
        await asyncio.to_thread(services.load_impressions)
        store.catalog.refresh_popular()
        await writer.start()
        outage = services.outage
        await outage.spool.start()
        # The catalog and index are millions of long-lived objects; without this, every full
        # collection walks them all (a 120 ms pause at 1M items, measured by benchmarks/serve.py).
        gc.collect()
        gc.freeze()
        # Background jobs that need the database pause while it is away; the watcher probes
        # it, and ships the spool (a dead worker's too) once it answers.
        every = partial(_every, paused=lambda: outage.degraded)
        tasks = [
            asyncio.create_task(_every(settings.db_probe_seconds, lambda: outage.watch(services))),
            asyncio.create_task(every(settings.catalog_poll_seconds, lambda: store.sync(engine))),
            asyncio.create_task(
                every(
                    settings.popular_refresh_seconds,
                    lambda: asyncio.to_thread(store.catalog.refresh_popular),
                )
            ),
            asyncio.create_task(
                every(settings.model_poll_seconds, lambda: follow_champion(engine, policy))
            ),
        ]
        tasks.append(
            asyncio.create_task(
                every(settings.model_poll_seconds, lambda: follow_factors(engine, store))
            )
        )
        tasks.append(
            asyncio.create_task(
                every(settings.model_poll_seconds, lambda: asyncio.to_thread(experiments.refresh))
            )
        )
        loops = services.loops
        tasks.append(
            asyncio.create_task(
                every(settings.model_poll_seconds, lambda: asyncio.to_thread(loops.refresh))
            )
        )
        if settings.retention_days > 0:  # at start, then hourly; deletes are idempotent
            await asyncio.to_thread(privacy.purge_expired, engine, settings)
            tasks.append(
                asyncio.create_task(
                    every(
                        privacy.PURGE_SECONDS,
                        lambda: asyncio.to_thread(privacy.purge_expired, engine, settings),
                    )
                )
            )
        if settings.embedding_interval > 0:
            holder = f"serve-{socket.gethostname()}-{os.getpid()}"
            tasks.append(
                asyncio.create_task(
                    every(
                        settings.embedding_interval,
                        lambda: asyncio.to_thread(train_if_leased, engine, settings, holder),
                    )
                )
            )
        learning = EmbeddedLearner(engine, settings, loops)
        if settings.learner == "embedded":
            # Not while records wait in the spool: a shipped decision must not be learned
            # before the rewards that ship after it.
            spooling = outage.spooling
            tasks.append(asyncio.create_task(_every(LEARN_SECONDS, learning.tick, spooling)))
        log.info("serving %d items from %s", len(store.index), engine.url.render_as_string())
        try:
            yield {"services": services}
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await services.evaluations.stop()
            await asyncio.gather(*loops.evaluations, return_exceptions=True)
            loops.evaluation_pool.shutdown()
            try:
                await asyncio.to_thread(learning.stop)
            except Exception as exc:  # the database is away: the leases lapse by themselves
                if not is_unavailable(exc):
                    raise
                log.warning("learner stopped without its final checkpoint: database unreachable")
            await writer.stop()
            await outage.spool.stop()
            await asyncio.to_thread(store.save)
            engine.dispose()

    async def openapi(request: Request) -> Response:
        return respond(request, openapi_document())

    personalizer = personalizer_app([*admin_routes(), *evaluation_routes()])

    return Starlette(
        routes=[
            Route("/v1/slates", routes.create_slate, methods=["POST"]),
            Route("/v1/rewards", routes.post_reward, methods=["POST"]),
            Route("/v1/events", routes.post_event, methods=["POST"]),
            Route("/v1/items", routes.put_items, methods=["PUT"]),
            Route("/v1/items/{item_id:str}", routes.remove_item, methods=["DELETE"]),
            Route("/v1/models", routes.list_models, methods=["GET"]),
            Route("/v1/models/{version:int}/promote", routes.promote_model, methods=["POST"]),
            Route("/v1/models/rollback", routes.rollback_model, methods=["POST"]),
            Route("/v1/experiments", experiments.read_all, methods=["GET"]),
            Route("/v1/experiments/{name:str}", experiments.put, methods=["PUT"]),
            Route("/v1/experiments/{name:str}", experiments.read, methods=["GET"]),
            Route("/v1/experiments/{name:str}", experiments.delete, methods=["DELETE"]),
            Route("/v1/experiments/{name:str}/report", experiments.report, methods=["GET"]),
            Route("/v1/evaluations", post_evaluation, methods=["POST"]),
            Route("/v1/evaluations/{evaluation_id:str}", read_evaluation, methods=["GET"]),
            Route("/v1/users/{user_id:str}", privacy.erase, methods=["DELETE"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Mount("/personalizer", app=personalizer),
            Mount("/loops/{loop}/personalizer", app=personalizer),
        ],
        exception_handlers={
            SlatebanditError: _known_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )


class EmbeddedLearner:
    """The learners inside ``serve``: a thread that works in short turns while it holds the
    lease, for the storefront's model and for every Personalizer loop."""

    def __init__(self, engine: Engine, settings: Settings, loops: Loops) -> None:
        self.engine, self.settings, self.loops = engine, settings, loops
        self.learner: Learner | None = None
        self.holder = f"serve-{socket.gethostname()}-{os.getpid()}"
        self.lease = settings.learner_lease_seconds
        self.personalizer = PersonalizerLearner(engine, self.holder, self.lease)
        # A cancelled tick leaves its thread running: stop() waits for that turn to end, so
        # its final checkpoint never lands in the middle of a batch.
        self._turning = threading.Lock()
        self._gates: ProcessPoolExecutor | None = None  # the promotion gate's own process

    def _judge(self, version: int) -> Verdict:
        """The promotion gate's verdict on ``version``, reached in a process of its own (this
        thread waits without the GIL)."""
        if self._gates is None:
            self._gates = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        url = self.engine.url.render_as_string(hide_password=False)
        return self._gates.submit(judge_apart, url, self.settings, version).result()

    async def tick(self) -> None:
        await asyncio.to_thread(self._turn)

    def _turn(self) -> None:
        with self._turning:
            self._learn()

    def _learn(self) -> None:
        self.personalizer.turn(self.loops.configurations(), budget=LEARN_BUDGET)
        if not hold_lease(self.engine, self.holder, self.lease):
            return  # another process learns; don't even load a model
        if self.learner is None:
            self.learner = Learner(self.engine, self.settings, self.holder)
            self.learner.gate = self._judge
        self.learner.run_due(budget=LEARN_BUDGET)

    def stop(self) -> None:
        with self._turning:
            self._stop()

    def _stop(self) -> None:
        if self._gates is not None:
            self._gates.shutdown(wait=True, cancel_futures=True)
        self.personalizer.stop()
        if self.learner is not None and hold_lease(self.engine, self.holder, self.lease):
            self.learner.checkpoint(judge=False)  # shutting down: the next checkpoint is judged
        with self.engine.begin() as conn:  # a successor need not wait for the lease to lapse
            release_lease(conn, LEASE, self.holder)
            release_lease(conn, PERSONALIZER_LEASE, self.holder)


def app_from_env() -> Starlette:
    """Factory for uvicorn workers, which re-read the settings from the environment."""
    return create_app(Settings.from_env())


async def _every(seconds: float, job, paused=lambda: False) -> None:  # type: ignore[no-untyped-def]
    while True:
        await asyncio.sleep(seconds)
        if paused():
            continue
        try:
            await job()
        except Exception as exc:  # a failed poll must not end the loop; the next one retries
            if is_unavailable(exc):
                log.warning("background job: database unreachable (%s)", type(exc).__name__)
            else:
                log.exception("background job failed")


async def _known_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SlatebanditError)
    return error_response(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(request, NotFound(f"no route {request.url.path}", field="path"))
    if exc.status_code == 405:
        return error_response(request, MethodNotAllowed(f"{request.method} is not allowed here"))
    return error_response(request, SlatebanditError(str(exc.detail)))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    if is_unavailable(exc):
        unreachable = DatabaseUnavailable("database: unreachable, retry later", field="database")
        return error_response(request, unreachable)
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, SlatebanditError("internal error"))
