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
import os
import socket
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from slatebandit.bandit import Exploration, VWScorer, return_freed_memory, trim_freed_memory
from slatebandit.config import Settings
from slatebandit.errors import (
    ConfigError,
    DatabaseUnavailable,
    MethodNotAllowed,
    NotFound,
    SlatebanditError,
)
from slatebandit.learning import LearnerProcess
from slatebandit.logging import GroupCommitWriter, open_engine
from slatebandit.logging.engine import is_unavailable
from slatebandit.personalizer.loops import Loops
from slatebandit.policies import PolicySet, VWPolicy, follow_champion
from slatebandit.policies.canary import CanaryBook
from slatebandit.policies.experiment_book import ExperimentBook
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
LEARN_SECONDS = 1.0  # the embedded learner's lease is renewed and a turn started this often


def index_path(settings: Settings) -> Path:
    return settings.data_dir / "index" / "items.json"


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
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

        # An ended canary's model is dropped, unless an experiment arm serves it too.
        def forget(spec: str) -> None:
            running = experiments.running
            if running is None or spec not in {arm.policy for arm in running.arms}:
                policies.forget(spec)
                trim_freed_memory()  # on the refresh's thread, not the event loop

        canaries = CanaryBook(engine, prepare=policies.get, forget=forget)
        await asyncio.to_thread(canaries.refresh)
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
            canaries,
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
                every(
                    settings.model_poll_seconds,
                    lambda: follow_champion(engine, policy, policies.loaded),
                )
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
        tasks.append(
            asyncio.create_task(
                every(settings.model_poll_seconds, lambda: asyncio.to_thread(canaries.refresh))
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
        holder = f"serve-{socket.gethostname()}-{os.getpid()}"
        learning = LearnerProcess(engine, settings, holder)
        if settings.learner == "embedded":
            # Not while records wait in the spool: a shipped decision must not be learned
            # before the rewards that ship after it.
            tick = partial(asyncio.to_thread, learning.tick)
            tasks.append(asyncio.create_task(_every(LEARN_SECONDS, tick, outage.spooling)))
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


def app_from_env() -> Starlette:
    """Factory for uvicorn workers, which re-read the settings from the environment."""
    return create_app(Settings.from_env())


async def _every(seconds: float, job, paused=lambda: False) -> None:  # type: ignore[no-untyped-def]
    task = asyncio.current_task()
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
        # Python 3.11's asyncio.wait_for can swallow a cancellation that lands as its timeout
        # fires (it turns it into TimeoutError; the outage probe then reports the database
        # unreachable and returns): without this check the loop ran on, and a worker's
        # shutdown waited for it for ever.
        if task is not None and task.cancelling():
            raise asyncio.CancelledError


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
