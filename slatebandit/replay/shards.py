"""Replay's evaluation pass over slices of the window, in processes of their own.

The pass is CPU-bound Python and numpy, one chunk after another: one process uses one core.
Here the window's decisions are cut into ``shards`` runs of consecutive ids; this process
evaluates the first while each of the others runs in a spawned process, which reads its own
slice from the database, rebuilds the targets from their SPECs, and hands back its ``Tally``.
The tallies add up to the one-process result: the estimators are mergeable accumulators and
the bootstrap's draw for a decision depends on its id and the seed alone.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

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
POLL_SECONDS = 0.5  # how often the progress of the other processes is read while waiting

_done_elsewhere: Any = None  # in a spawned process: the shared count of decisions it did


def evaluate_sharded(
    engine: Engine,
    settings: Settings,
    options: Options,
    window: Window,
    decisions: int,
    model: RewardModel,
    shards: int,
    progress: Progress,
    targets: Sequence[Target],
    reward: SlotReward,
) -> Tally:
    """The evaluation pass over ``window`` (``decisions`` of them) in ``shards`` slices, each
    slot's reward made by ``reward``; this process evaluates the first with ``targets``, the
    others build their own."""
    with engine.connect() as conn:
        cuts = [nth_decision(conn, window, decisions * i // shards - 1) for i in range(1, shards)]
    last = window.through if window.through is not None else max(c or 0 for c in cuts)
    bounds = [window.after, *(int(cut) for cut in cuts if cut is not None), last]
    slices = [
        dataclasses.replace(window, after=lo, through=hi)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    url = engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited locks
    counter = context.Value("q", 0)
    with ProcessPoolExecutor(
        max_workers=len(slices) - 1,
        mp_context=context,
        initializer=_share,
        initargs=(counter,),
    ) as pool:
        others = [
            pool.submit(_evaluate_slice, url, settings, options, part, model, reward)
            for part in slices[1:]
        ]

        def report(done_here: int) -> None:
            progress("replay", done_here + counter.value, decisions)

        with threadpool_limits(limits=1):  # a core per slice: see _share
            mine = _tally(settings, options, engine, slices[0], model, targets, reward, report)
        pending: set[Future[Tally]] = set(others)
        while pending:  # the others' progress, until each hands its tally back
            _, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            report(mine.decisions)
        for other in others:
            mine = mine + other.result()
    return mine


def _share(counter: Any) -> None:
    """A spawned process starts here. Each slice gets a core, so numpy's BLAS keeps to one
    thread: left to spread each bootstrap product over every core, two slices ran no faster
    than one process (1,000,000 OBD rows: 27.2 s in two processes, 23.1 s in one; 14.1 s in
    two with one BLAS thread each, measured)."""
    global _done_elsewhere
    _done_elsewhere = counter
    threadpool_limits(limits=1)


def _evaluate_slice(
    url: str,
    settings: Settings,
    options: Options,
    window: Window,
    model: RewardModel,
    reward: SlotReward,
) -> Tally:
    """In a spawned process: one slice's tally."""
    engine = open_engine(url)
    last = 0

    def count(done: int) -> None:
        nonlocal last
        with _done_elsewhere.get_lock():
            _done_elsewhere.value += done - last
        last = done

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
