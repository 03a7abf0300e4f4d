"""``POST /v1/evaluations`` and ``GET /v1/evaluations/{id}``: replay for analysts over HTTP.

An evaluation runs in the worker that accepted it, on a thread pool of its own with one
thread (``RUNNING``), so replays queue behind each other instead of taking the default pool
that serving's reads run on; past ``QUEUED`` waiting evaluations a new one gets a 429. It
writes its progress to the ``evaluations`` table about once a second, so any worker can answer
a GET. If that worker dies, the row stops moving and GET reports it failed after
``STALE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import Response

from slatebandit.config import Settings
from slatebandit.errors import NotFound, SlatebanditError, TooManyRequests
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
RUNNING = 1  # replays at a time per worker: the rest of the CPU stays with serving
QUEUED = 4  # replays waiting per worker before new ones are refused (429)


class _Stopped(Exception):
    pass


class Evaluations:
    """The replays this worker runs, each on a thread of its own."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.stopping = threading.Event()
        self.tasks: set[asyncio.Future[None]] = set()
        self.pool = ThreadPoolExecutor(RUNNING, thread_name_prefix="replay")

    def check_room(self) -> None:
        if len(self.tasks) >= RUNNING + QUEUED:
            raise TooManyRequests(
                f"{len(self.tasks)} evaluations are running or queued on this worker; "
                "try again when one has finished"
            )

    def start(self, evaluation_id: str, options: ReplayOptions) -> None:
        loop = asyncio.get_running_loop()
        task = loop.run_in_executor(self.pool, self._run, evaluation_id, options)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def wait(self) -> None:
        """Until every replay started so far has finished (tests await this)."""
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Ask running replays to stop at their next chunk, and wait for them."""
        self.stopping.set()
        await self.wait()
        self.pool.shutdown()

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
    assert s.evaluations is not None
    s.evaluations.check_room()
    await asyncio.to_thread(_check_targets, s.engine, options.policies)
    evaluation_id = uuid.uuid4().hex
    unit = partial(create_evaluation, evaluation_id=evaluation_id, request=body.model_dump())
    await s.writer.submit(lambda conn: unit(conn))
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
