"""Stopping a background task: a cancellation it lost does not hang the shutdown."""

import asyncio
import logging

import pytest

from connectors.omnidesk import tasks


async def test_a_loop_that_lost_its_cancellation_is_stopped_all_the_same() -> None:
    lost = []

    async def loop() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if not lost:  # as asyncio.wait_for can lose it, before Python 3.12
                    lost.append(True)
                    continue
                raise

    task = asyncio.ensure_future(loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(tasks.stop(task), 3)
    assert lost and task.cancelled()


async def test_a_task_that_will_not_stop_is_left_after_the_grace_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done = asyncio.Event()

    async def stubborn() -> None:
        while not done.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    task = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="connectors.omnidesk.tasks"):
        await asyncio.wait_for(tasks.stop(task, grace=0.3), 3)
    assert not task.done()
    assert "did not stop within 0.3 s" in caplog.text
    done.set()
    task.cancel()
    await asyncio.wait({task}, timeout=1)
    assert task.done()


async def test_stopping_several_stops_each() -> None:
    several = [asyncio.ensure_future(asyncio.sleep(10)) for _ in range(3)]
    await asyncio.wait_for(tasks.stop_all(several), 3)
    assert all(task.cancelled() for task in several)
