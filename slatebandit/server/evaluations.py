"""``POST /v1/evaluations`` and ``GET /v1/evaluations/{id}``: replay for analysts over HTTP.

An evaluation runs on a thread of the worker that accepted it, beside serving (a replay is
numpy and SQL reads; VW scoring releases the GIL in C++), and writes its progress to the
``evaluations`` table about once a second, so any worker can answer a GET. If that worker dies,
the row stops moving and GET reports it failed after ``STALE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from functools import partial

from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import Response

from slatebandit.config import Settings
from slatebandit.errors import NotFound, SlatebanditError
from slatebandit.logging.evaluations import (
    advance_evaluation,
    create_evaluation,
    finish_evaluation,
    get_evaluation,
)
from slatebandit.replay import ReplayOptions, parse_target, replay
from slatebandit.server.codec import read_body, respond
from slatebandit.server.schemas import EvaluationRequest, validate
from slatebandit.server.services import for_request

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 1.0


class _Stopped(Exception):
    pass


class Evaluations:
    """The replays this worker runs, each on a thread of its own."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.stopping = threading.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, evaluation_id: str, options: ReplayOptions) -> None:
        task = asyncio.create_task(asyncio.to_thread(self._run, evaluation_id, options))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def wait(self) -> None:
        """Until every replay started so far has finished (tests await this)."""
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Ask running replays to stop at their next chunk, and wait for them."""
        self.stopping.set()
        await self.wait()

    def _run(self, evaluation_id: str, options: ReplayOptions) -> None:
        last = 0.0

        def progress(phase: str, done: int, total: int) -> None:
            nonlocal last
            if self.stopping.is_set():
                raise _Stopped
            if time.monotonic() - last >= PROGRESS_SECONDS or done >= total:
                with self.engine.begin() as conn:
                    advance_evaluation(conn, evaluation_id, phase, done, total)
                last = time.monotonic()

        result, error = None, None
        try:
            result = replay(self.engine, self.settings, options, progress).to_dict()
        except _Stopped:
            error = "the server stopped before the evaluation finished"
        except SlatebanditError as exc:
            error = exc.message
        except Exception:  # reported in the row; the details go to the server log
            log.exception("evaluation %s failed", evaluation_id)
            error = "internal error"
        with self.engine.begin() as conn:
            finish_evaluation(conn, evaluation_id, result=result, error=error)


def _check_targets(engine: Engine, specs: tuple[str, ...]) -> None:
    """Resolve every SPEC now, so a bad one is a 4xx and not a failed evaluation."""
    for spec in specs:
        parse_target(spec, engine).close()


async def post_evaluation(request: Request) -> Response:
    s = for_request(request, "analyst")
    body = validate(EvaluationRequest, await read_body(request, s.settings.max_body_bytes))
    options = ReplayOptions.parse(**body.model_dump())
    await asyncio.to_thread(_check_targets, s.engine, options.policies)
    evaluation_id = uuid.uuid4().hex
    unit = partial(create_evaluation, evaluation_id=evaluation_id, request=body.model_dump())
    await s.writer.submit(lambda conn: unit(conn))
    assert s.evaluations is not None
    s.evaluations.start(evaluation_id, options)
    location = f"/v1/evaluations/{evaluation_id}"
    response = respond(
        request, {"id": evaluation_id, "status": "running", "location": location}, 202
    )
    response.headers["location"] = location
    return response


async def read_evaluation(request: Request) -> Response:
    s = for_request(request, "analyst")
    evaluation_id = request.path_params["evaluation_id"]
    found = await s.read(lambda conn: get_evaluation(conn, evaluation_id))
    if found is None:
        raise NotFound(f"evaluation_id: no evaluation {evaluation_id!r}", field="evaluation_id")
    return respond(request, found)
