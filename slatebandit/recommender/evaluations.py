"""Replays that analysts start over HTTP (``POST /v1/evaluations``), run by the worker that
accepted them.

Each runs on a thread pool of its own with one thread (``RUNNING``), so replays queue behind
each other instead of taking the default pool that serving's reads run on; past ``QUEUED``
waiting evaluations a new one is refused (429). It writes its progress to the ``evaluations``
table about once a second, so any worker can answer a GET.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine

from slatebandit.config import Settings
from slatebandit.errors import SlatebanditError, TooManyRequests
from slatebandit.logging.evaluations import advance_evaluation, finish_evaluation
from slatebandit.replay import ReplayOptions, replay

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
