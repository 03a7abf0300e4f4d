"""The learning loop, written once: one turn learns what is due (the storefront's model and
every Personalizer loop), then moves every release on a step (``replay.release``).

``slatebandit learn`` runs turns in its own process. ``serve`` runs them in a child process
of the worker that holds the learner lease (``LearnerProcess``), scheduled SCHED_IDLE on Linux
(nice 10 elsewhere), so a turn's CPU (VW learning, the guard's replay, the canary's figures)
never holds a serving worker's GIL and runs only when the cores have time to spare. Each
turn's learning is bounded by a time budget; the release step reads a bounded number of new
decisions.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor

from sqlalchemy import Engine

from slatebandit.bandit import return_freed_memory, trim_freed_memory
from slatebandit.config import Settings
from slatebandit.logging import open_engine
from slatebandit.logging.learning import release_lease
from slatebandit.personalizer.learner import LEASE as PERSONALIZER_LEASE
from slatebandit.personalizer.learner import PersonalizerLearner, stored_configurations
from slatebandit.policies.learner import LEASE, Learner, hold_lease
from slatebandit.replay.release import Release

log = logging.getLogger(__name__)
NICE = 10  # serve's learner process where SCHED_IDLE is not to be had
TURN_BUDGET = 0.5  # seconds of learning per turn in serve's learner process


class LearningLoop:
    """Learning turns for one process that competes for the learner lease as ``holder``."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        holder: str,
        on_checkpoint: Callable[[Learner, int], None] | None = None,
    ) -> None:
        self.engine, self.settings, self.holder = engine, settings, holder
        self.lease = settings.learner_lease_seconds
        self.on_checkpoint = on_checkpoint
        self.learner: Learner | None = None  # built once the lease is held
        self.release = Release(engine, settings)
        self.personalizer = PersonalizerLearner(engine, holder, self.lease)

    def turn(self, budget: float) -> tuple[bool, int]:
        """Learn for up to ``budget`` seconds, then step the releases; returns whether this
        process holds the learner lease, and how many decisions (and loop events) it took."""
        configurations = stored_configurations(self.engine, self.settings.loops)
        taken = self.personalizer.turn(configurations, budget=budget)
        if not hold_lease(self.engine, self.holder, self.lease):
            return False, taken  # another process learns; don't even load a model
        if self.learner is None:
            self.learner = Learner(self.engine, self.settings, self.holder)
            if self.on_checkpoint is not None:
                learner, report = self.learner, self.on_checkpoint
                learner.on_checkpoint = lambda version: report(learner, version)
        taken += self.learner.run_due(budget=budget)
        self.release.turn()
        return True, taken

    def checkpoint(self) -> None:
        if self.learner is not None and hold_lease(self.engine, self.holder, self.lease):
            self.learner.checkpoint()

    def stop(self) -> None:
        """Checkpoint what was learned and hand the leases on (a successor need not wait)."""
        self.checkpoint()
        self.personalizer.stop()
        with self.engine.begin() as conn:
            release_lease(conn, LEASE, self.holder)
            release_lease(conn, PERSONALIZER_LEASE, self.holder)


# serve's learner process ---------------------------------------------------------------------

_loop: LearningLoop | None = None  # the child's loop (one per learner process)


def _lower_priority() -> bool:
    """Run only on CPU the serving workers leave idle (Linux SCHED_IDLE); elsewhere nice 10.
    At nice 10 the soak still saw the learner's turns, a guard's replay above all, queue
    requests behind them on two cores. True if SCHED_IDLE was taken."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        os.nice(NICE)
        return False
    return True


WRITES = ("insert", "update", "delete", "replace")


def write_at_normal_priority(engine: Engine) -> None:
    """Hold the database's write lock at normal priority, and compute at SCHED_IDLE.

    SQLite has one writer at a time, and every slate waits for its group commit. A SCHED_IDLE
    learner that takes the write lock runs only when the cores are idle, which under load they
    are not: the soak saw serving workers' commits, and so their slates, wait up to a second
    behind a learner that held the lock without the CPU to release it (priority inversion).
    So a transaction's first write lifts the learner's thread to SCHED_OTHER, and the
    connection's return to the pool, after the commit or rollback, drops it back. Linux lets
    a process leave SCHED_IDLE when its nice value is within RLIMIT_NICE (always for root);
    where it may not, the learner stays idle."""
    from sqlalchemy import event

    lifted = threading.local()

    def before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if not getattr(lifted, "on", False) and statement.lstrip()[:7].lower().startswith(WRITES):
            try:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))  # type: ignore[attr-defined]
            except OSError:
                return
            lifted.on = True

    def returned(dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
        if getattr(lifted, "on", False):
            lifted.on = False
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "checkin", returned)


def _start_child(url: str, settings: Settings, holder: str, parent: int) -> None:
    global _loop
    idle = _lower_priority()
    return_freed_memory()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    engine = open_engine(url, create=False)
    if idle:
        write_at_normal_priority(engine)
    _loop = LearningLoop(engine, settings, holder)

    def orphaned() -> None:  # a worker killed with SIGKILL cannot stop its child
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=orphaned, daemon=True, name="orphan-watch").start()


def _child_turn(budget: float) -> int:
    """One turn, then the free pages it left inside glibc's heaps go back to the system: a
    turn loads models (a guard's two, its reward model) and drops them, and without a trim
    the soak saw this process hold 6 to 20 MB more after each minute (0.1 to 10 ms a trim)."""
    assert _loop is not None
    taken = _loop.turn(budget)[1]
    trim_freed_memory()
    return taken


def _child_stop() -> None:
    assert _loop is not None
    _loop.stop()
    _loop.engine.dispose()


class LearnerProcess:
    """The learner inside ``serve``: the worker that holds the learner lease starts one child
    process (spawned, at ``NICE``) and hands it a turn every tick. The worker itself only renews
    the lease, so a long turn (a guard's replay) never lets the lease lapse."""

    def __init__(self, engine: Engine, settings: Settings, holder: str) -> None:
        self.engine, self.settings, self.holder = engine, settings, holder
        self._pool: ProcessPoolExecutor | None = None
        self._turn: Future[int] | None = None
        self._lock = threading.Lock()  # tick and stop never overlap

    @property
    def pid(self) -> int | None:
        if self._pool is None:
            return None
        processes = list(self._pool._processes)  # type: ignore[attr-defined]
        return processes[0] if processes else None

    def tick(self) -> None:
        """Called every second (on a thread): renew the lease; start a turn if none runs."""
        with self._lock:
            if not hold_lease(self.engine, self.holder, self.settings.learner_lease_seconds):
                return
            if self._turn is not None and not self._turn.done():
                return
            if self._turn is not None and self._turn.exception() is not None:
                log.error("learner turn failed", exc_info=self._turn.exception())
            if self._pool is None:
                url = self.engine.url.render_as_string(hide_password=False)
                self._pool = ProcessPoolExecutor(
                    1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child,
                    initargs=(url, self.settings, self.holder, os.getpid()),
                )
            self._turn = self._pool.submit(_child_turn, TURN_BUDGET)

    def wait(self) -> int:
        """Wait for the running turn (tests); returns what it took."""
        turn = self._turn
        return 0 if turn is None else turn.result()

    def stop(self) -> None:
        with self._lock:
            if self._pool is None:
                return
            try:
                if self._turn is not None:
                    self._turn.result()  # its checkpoint must not land mid-batch
                self._pool.submit(_child_stop).result()
            finally:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
