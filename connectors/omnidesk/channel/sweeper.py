"""The sweeper: ends idle chats, sends the one-time wait notice, writes due records.

It also tells Omnidesk again of the ends it has not heard of yet.

It runs in the background every few seconds (``interval_for`` picks how often
from the settings), on one instance at a time (its lease in the switchboard).
Each handoff is handled on its own: one that fails or is slow is logged or
left to finish, and the others still get their turn. It also removes agent
files older than ``files_retention``. What it does to a handoff, it asks the
relay to do.
"""

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Dict, Optional

from connectors.omnidesk.channel.relay import Relay
from connectors.omnidesk.channel.switchboard import Handoff, Switchboard, SwitchboardError
from connectors.omnidesk.handoff import HandoffOutcome
from connectors.omnidesk.settings import OmnideskSettings

logger = logging.getLogger(__name__)

FILES_SWEEP_EVERY = 60.0  # seconds between looks for agent files past their retention


def interval_for(settings: OmnideskSettings) -> float:
    """A quarter of the shortest timing it serves, between 0.05 and 5 seconds."""
    shortest = min(
        settings.inactivity_timeout,
        settings.queue_timeout,
        settings.record_interval,
        settings.agent_wait_notice or settings.inactivity_timeout,
    )
    return max(0.05, min(5.0, shortest / 4))


class Sweeper:
    """Looks over every open handoff now and then, on one instance at a time.

    With the Redis switchboard the instance that holds the sweeper lease looks
    at the handoffs (the others only write their own tracker records). Each
    handoff is looked at in a task of its own, at most ``sweep_concurrency`` at
    once; one that is still being handled (a slow Omnidesk call while ending
    it) is skipped by the next sweeps rather than waited for.
    """

    def __init__(
        self,
        relay: Relay,
        switchboard: Switchboard,
        settings: OmnideskSettings,
        interval: float = 1.0,
    ) -> None:
        self.relay = relay
        self.switchboard = switchboard  # for the sweeper's own lease
        self.settings = settings
        self.interval = interval
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._slots = asyncio.Semaphore(settings.sweep_concurrency)
        self._busy: Dict[str, asyncio.Future[None]] = {}
        self._files_swept_at: Optional[float] = None

    @property
    def lease_seconds(self) -> float:
        """Long enough to outlast a few sweeps, short enough that a dead holder is replaced soon."""
        return max(10.0, 3 * self.interval)

    async def sweep(self, now: Optional[float] = None, wait: bool = True) -> None:
        """One look over every open handoff, then the tracker writes that are due.

        With ``wait`` false the looks run on in the background (the loop does
        so); tests wait for them.
        """
        at = time.time() if now is None else now
        if await self.switchboard.claim_sweeper(self.holder, self.lease_seconds):
            started = [
                self._start_look(handoff, at)
                for handoff in await self.relay.open_handoffs()
                if handoff.conversation_id not in self._busy
            ]
            await self._remove_old_files()
            if wait and started:
                await asyncio.wait(started)
        await self.relay.write_due_records()

    def _start_look(self, handoff: Handoff, at: float) -> "asyncio.Future[None]":
        task = asyncio.ensure_future(self._look_bounded(handoff, at))
        self._busy[handoff.conversation_id] = task
        task.add_done_callback(lambda _: self._busy.pop(handoff.conversation_id, None))
        return task

    async def _look_bounded(self, handoff: Handoff, at: float) -> None:
        async with self._slots:
            try:
                await self._look_at(handoff, at)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.error(
                    "Sweep of chat %s of conversation %s failed: %s: %s",
                    handoff.chat_session_id,
                    handoff.conversation_id,
                    type(error).__name__,
                    error,
                )

    async def _remove_old_files(self) -> None:
        retention = self.settings.files_retention
        if not retention:
            return
        clock = time.monotonic()
        if self._files_swept_at is not None and clock - self._files_swept_at < FILES_SWEEP_EVERY:
            return
        self._files_swept_at = clock
        removed = await self.relay.remove_old_files(retention)
        if removed:
            logger.info("Removed %d agent files older than %g s.", removed, retention)

    async def _look_at(self, handoff: Handoff, at: float) -> None:
        if handoff.ending is not None:
            # Ended on our side; Omnidesk has not heard of it yet.
            await self.relay.retry_end(handoff, at)
            return
        if handoff.agent_replied:
            idle, limit, why = at - handoff.last_activity, self.settings.inactivity_timeout, "idle"
        else:
            # Still in Omnidesk's queue: the customer was told to wait, so their
            # silence is no sign they left. Only queue_timeout ends such a chat.
            idle, limit, why = at - handoff.started_at, self.settings.queue_timeout, "unanswered"
        if idle >= limit:
            logger.info(
                "Chat %s of conversation %s %s for %.0f s: ending it.",
                handoff.chat_session_id,
                handoff.conversation_id,
                why,
                idle,
            )
            await self.relay.end(handoff, HandoffOutcome.TIMED_OUT)
            return
        wait = self.settings.agent_wait_notice
        if (
            wait
            and wait > 0
            and not handoff.agent_replied
            and at - handoff.started_at >= wait
            and await self.relay.remind_unanswered(handoff)
        ):
            logger.info(
                "No agent reply yet in chat %s of conversation %s: customer told.",
                handoff.chat_session_id,
                handoff.conversation_id,
            )

    async def run(self, interval: float) -> None:
        """Sweep every ``interval`` seconds until cancelled."""
        self.interval = interval
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.sweep(wait=False)
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    logger.error("Sweep of open chats failed: %s: %s", type(error).__name__, error)
        finally:
            await self.wait_idle(5.0)
            try:
                await self.switchboard.release_sweeper(self.holder)
            except SwitchboardError as error:
                logger.warning("Could not give the sweeper lease up: %s", error)

    async def wait_idle(self, timeout: float) -> None:
        """Wait (bounded) for the looks under way, then cancel what is left."""
        if not self._busy:
            return
        _, pending = await asyncio.wait(set(self._busy.values()), timeout=timeout)
        for task in pending:
            task.cancel()
