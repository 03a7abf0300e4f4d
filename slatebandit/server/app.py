"""The Starlette app factory and its lifespan.

The lifespan opens the worker's ``Recommender`` (``slatebandit.recommender``: every part, and
the background jobs that keep them in step with the database) and closes it at shutdown.
Handlers reach it as ``request.state.recommender``, through ``services.for_request``, which
checks the request's key first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from slatebandit.config import Settings
from slatebandit.errors import (
    DatabaseUnavailable,
    MethodNotAllowed,
    NotFound,
    SlatebanditError,
)
from slatebandit.logging.engine import is_unavailable
from slatebandit.recommender import Recommender
from slatebandit.server import catalog, console, experiments, metrics, privacy, routes, rules, stats
from slatebandit.server.codec import error_response, respond
from slatebandit.server.collector import tend_collector
from slatebandit.server.connections import RecycleConnections
from slatebandit.server.evaluations import list_evaluations, post_evaluation, read_evaluation
from slatebandit.server.openapi import openapi_document
from slatebandit.server.personalizer import personalizer_app
from slatebandit.server.personalizer_admin import admin_routes
from slatebandit.server.personalizer_evaluations import evaluation_routes
from slatebandit.server.services import Access
from slatebandit.server.summary import metrics_summary

log = logging.getLogger("slatebandit.server")


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        recommender = await Recommender.open(settings)
        await recommender.start()
        collector = asyncio.create_task(tend_collector())
        try:
            yield {"recommender": recommender, "access": Access.of(settings)}
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector  # its callback leaves gc.callbacks before the loop closes
            metrics.worker_exiting()
            await recommender.close()

    async def openapi(request: Request) -> Response:
        return respond(request, openapi_document())

    personalizer = personalizer_app([*admin_routes(), *evaluation_routes()])

    served = [
        Route("/v1/slates", routes.create_slate, methods=["POST"]),
        Route("/v1/rewards", routes.post_reward, methods=["POST"]),
        Route("/v1/events", routes.post_event, methods=["POST"]),
        Route("/v1/items", routes.put_items, methods=["PUT"]),
        Route("/v1/items", catalog.search, methods=["GET"]),
        Route("/v1/items/{item_id:str}", routes.remove_item, methods=["DELETE"]),
        Route("/v1/items/{item_id:str}", catalog.read, methods=["GET"]),
        Route("/v1/models", routes.list_models, methods=["GET"]),
        Route("/v1/models/{version:int}/promote", routes.promote_model, methods=["POST"]),
        Route("/v1/models/rollback", routes.rollback_model, methods=["POST"]),
        Route("/v1/rules", rules.read_all, methods=["GET"]),
        Route("/v1/rules/{name:str}", rules.put, methods=["PUT"]),
        Route("/v1/rules/{name:str}", rules.delete, methods=["DELETE"]),
        Route("/v1/experiments", experiments.read_all, methods=["GET"]),
        Route("/v1/experiments/{name:str}", experiments.put, methods=["PUT"]),
        Route("/v1/experiments/{name:str}", experiments.read, methods=["GET"]),
        Route("/v1/experiments/{name:str}", experiments.delete, methods=["DELETE"]),
        Route("/v1/experiments/{name:str}/report", experiments.report, methods=["GET"]),
        Route("/v1/evaluations", post_evaluation, methods=["POST"]),
        Route("/v1/evaluations", list_evaluations, methods=["GET"]),
        Route("/v1/evaluations/{evaluation_id:str}", read_evaluation, methods=["GET"]),
        Route("/v1/users/{user_id:str}", privacy.erase, methods=["DELETE"]),
        Route("/v1/stats", stats.stats, methods=["GET"]),
        Route("/v1/metrics/summary", metrics_summary, methods=["GET"]),
        Route("/healthz", routes.healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Mount("/personalizer", app=personalizer),
        Mount("/loops/{loop}/personalizer", app=personalizer),
        Route("/metrics", metrics.metrics, methods=["GET"]),
        Route("/v1/access", console.access, methods=["GET"]),
        Route("/", console.home, methods=["GET"]),
        Mount("/console", app=console.static(), name="console"),
    ]
    app = Starlette(
        routes=served,
        middleware=[
            Middleware(RecycleConnections, every=settings.keepalive_requests),
            Middleware(metrics.Timing, routes=served),
        ],
        exception_handlers={
            SlatebanditError: _known_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.stats = {}  # GET /v1/stats: each window's figures, read at most every 10 s
    app.state.summary = {}  # GET /v1/metrics/summary: the same, for each window's outcomes
    return app


def app_from_env() -> Starlette:
    """Factory for uvicorn workers, which re-read the settings from the environment."""
    return create_app(Settings.from_env())


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
