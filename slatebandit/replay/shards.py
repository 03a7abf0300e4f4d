"""Replay's two passes over slices of the window, in processes of their own.

Each pass is CPU-bound Python and numpy, one chunk after another: one process uses one core.
Here the window's decisions are cut into ``shards`` runs of consecutive ids; this process
takes the first while each of the others runs in a spawned process, which reads its own slice
from the database and hands back what it gathered:

1. the item means (``RewardModel``) of its slice's shown slots, when no reward model was
   given: the fits add up to the fit over the window;
2. with that model, its slice's ``Tally``, for targets rebuilt from their SPECs. The tallies
   add up to the one-process result: the estimators are mergeable accumulators and the
   bootstrap's draw for a decision depends on its id and the seed alone.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

from sqlalchemy import Engine
from threadpoolctl import threadpool_limits

from slatebandit.config import Settings
from slatebandit.logging import open_engine
from slatebandit.logging.objective import SlotReward
from slatebandit.policies import exploration_of
from slatebandit.replay.log import Window, nth_decision, read_chunks
from slatebandit.replay.passes import Options, Tally, evaluate, new_tally
from slatebandit.replay.reward_model import RewardModel
from slatebandit.replay.targets import Target, parse_target

Progress = Callable[[str, int, int], None]
T = TypeVar("T")
POLL_SECONDS = 0.5  # how often the progress of the other processes is read while waiting

_done_elsewhere: Any = None  # in a spawned process: the shared count of decisions it did


def evaluate_sharded(
    engine: Engine,
    settings: Settings,
    options: Options,
    window: Window,
    decisions: int,
    model: RewardModel | None,
    shards: int,
    progress: Progress,
    targets: Sequence[Target],
    reward: SlotReward,
) -> Tally:
    """The evaluation pass over ``window`` (``decisions`` of them) in ``shards`` slices, each
    slot's reward made by ``reward``, with ``model`` or (None) item means fitted over the same
    slices first; this process evaluates the first with ``targets``, the others build their
    own."""
    url = engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited locks
    counter = context.Value("q", 0)
    with ProcessPoolExecutor(
        max_workers=shards - 1,
        mp_context=context,
        initializer=_share,
        initargs=(counter,),
    ) as pool:
        pool.submit(_ready)  # the processes start (half a second) while the slices are cut
        with engine.connect() as conn:
            cuts = [
                nth_decision(conn, window, decisions * i // shards - 1) for i in range(1, shards)
            ]
        last = window.through if window.through is not None else max(c or 0 for c in cuts)
        bounds = [window.after, *(int(cut) for cut in cuts if cut is not None), last]
        slices = [
            dataclasses.replace(window, after=lo, through=hi)
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]

        def in_slices(
            phase: str, mine: Callable[[Callable[[int], None]], T], job: Callable[[Window], T]
        ) -> T:
            """``mine`` on the first slice here, ``job`` on each other slice in the pool;
            every result added up."""
            counter.value = 0
            others = [pool.submit(job, part) for part in slices[1:]]
            done_here = 0

            def report(done: int) -> None:
                nonlocal done_here
                done_here = done
                progress(phase, done + counter.value, decisions)

            with threadpool_limits(limits=1):  # a core per slice: see _share
                total = mine(report)
            pending: set[Future[T]] = set(others)
            while pending:  # the others' progress, until each hands its result back
                _, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                report(done_here)
            for other in others:
                total = total + other.result()  # type: ignore[operator]
            return total

        if model is None:
            model = in_slices(
                "reward model",
                lambda report: RewardModel.fit(engine, slices[0], reward, report),
                functools.partial(_fit_slice, url, reward),
            )
        fitted = model
        return in_slices(
            "replay",
            lambda report: _tally(
                settings, options, engine, slices[0], fitted, targets, reward, report
            ),
            functools.partial(_evaluate_slice, url, settings, options, fitted, reward),
        )


def _ready() -> None:
    """Nothing: asking for it starts a process of the pool, which imports this module."""


def _share(counter: Any) -> None:
    """A spawned process starts here. Each slice gets a core, so numpy's BLAS keeps to one
    thread: left to spread each bootstrap product over every core, two slices ran no faster
    than one process (1,000,000 OBD rows: 27.2 s in two processes, 23.1 s in one; 14.1 s in
    two with one BLAS thread each, measured)."""
    global _done_elsewhere
    _done_elsewhere = counter
    threadpool_limits(limits=1)


def _counter() -> Callable[[int], None]:
    """In a spawned process: a progress callback adding to the count the caller reads."""
    last = 0

    def count(done: int) -> None:
        nonlocal last
        with _done_elsewhere.get_lock():
            _done_elsewhere.value += done - last
        last = done

    return count


def _fit_slice(url: str, reward: SlotReward, window: Window) -> RewardModel:
    """In a spawned process: the item means of one slice."""
    engine = open_engine(url)
    try:
        return RewardModel.fit(engine, window, reward, _counter())
    finally:
        engine.dispose()


def _evaluate_slice(
    url: str,
    settings: Settings,
    options: Options,
    model: RewardModel,
    reward: SlotReward,
    window: Window,
) -> Tally:
    """In a spawned process: one slice's tally."""
    engine = open_engine(url)
    count = _counter()
    targets = [parse_target(spec, engine) for spec in options.policies]
    try:
        tally = _tally(settings, options, engine, window, model, targets, reward, count)
    finally:
        for target in targets:
            target.close()
        engine.dispose()
    for estimators in tally.estimators.values():  # the kept counts are no part of the result
        for estimator in estimators:
            if estimator.bootstrap is not None:
                estimator.bootstrap.forget()
    return tally


def _tally(
    settings: Settings,
    options: Options,
    engine: Engine,
    window: Window,
    model: RewardModel,
    targets: Sequence[Target],
    reward: SlotReward,
    on_chunk: Callable[[int], None],
) -> Tally:
    """The pass over ``window`` with estimators of its own."""
    chunks = read_chunks(engine, window, reward=reward)
    return evaluate(
        chunks, targets, new_tally(targets, options), model, exploration_of(settings), on_chunk
    )
