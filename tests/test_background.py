"""The background loops (``recommender.background.every``) end when shutdown cancels them."""

from __future__ import annotations

import asyncio

from slatebandit.recommender.background import every as _every


def test_a_loop_ends_even_when_its_job_swallowed_the_cancellation() -> None:
    """Python 3.11's ``asyncio.wait_for`` can turn a cancellation into a timeout, and the
    outage probe then returns as if the database were away; the loop must still end, or a
    worker's shutdown waits for it for ever."""

    async def scenario() -> tuple[bool, int]:
        running = asyncio.Event()
        calls = 0

        async def job() -> None:
            nonlocal calls
            calls += 1
            running.set()
            try:
                await asyncio.Event().wait()  # until cancelled
            except asyncio.CancelledError:
                if calls > 1:
                    raise  # (so that asyncio.run can end the loop this test failed to end)
                return  # swallowed, as wait_for does when the cancellation meets its timeout

        task = asyncio.create_task(_every(0, job))
        await running.wait()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)  # bounds the hang this test catches
        return task in done and task.cancelled(), calls

    ended, calls = asyncio.run(scenario())
    assert ended
    assert calls == 1  # it did not go round again


def test_a_failing_job_does_not_end_the_loop() -> None:
    async def scenario() -> int:
        calls = 0
        third = asyncio.Event()

        async def job() -> None:
            nonlocal calls
            calls += 1
            if calls == 3:
                third.set()
            raise RuntimeError("a failed poll")

        task = asyncio.create_task(_every(0, job))
        await third.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return calls

    assert asyncio.run(scenario()) >= 3
