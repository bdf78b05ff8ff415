"""Stopping a background task for sure.

``task.cancel()`` followed by ``await task`` waits forever when the task lost
the cancellation: ``asyncio.wait_for`` before Python 3.12 (python/cpython#86296)
and async-timeout, which redis-py uses for its reads, can swallow a
cancellation that arrives just as the awaited call finishes. A loop that lost
it simply runs on. ``stop`` cancels again until the task is done, within a
grace period, so a shutdown never hangs on one.
"""

import asyncio
import logging
from typing import Any, Iterable, Optional

logger = logging.getLogger(__name__)

# How often a task that is not done yet is cancelled again.
CANCEL_AGAIN_EVERY = 0.1


async def stop(task: "Optional[asyncio.Future[Any]]", grace: float = 5.0) -> None:
    """Cancel ``task`` and wait until it is done; past ``grace`` seconds it is left (logged).

    What the task ended with, other than its cancellation, is logged, not raised:
    the caller is shutting it down.
    """
    if task is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while not task.done():
        task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            logger.warning("Background task %r did not stop within %g s; left.", task, grace)
            return
        await asyncio.wait({task}, timeout=min(CANCEL_AGAIN_EVERY, remaining))
    if not task.cancelled() and task.exception() is not None:
        logger.warning("Background task %r ended with %r.", task, task.exception())


async def stop_all(tasks: "Iterable[asyncio.Future[Any]]", grace: float = 5.0) -> None:
    """``stop`` each of ``tasks``, all within one grace period."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await asyncio.gather(*(stop(task, grace) for task in pending))
