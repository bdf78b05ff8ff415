"""The sweeper: ends idle chats, sends the one-time wait notice, writes due records.

It runs in the background every few seconds (``interval_for`` picks how often
from the settings). Each handoff is handled on its own: one that fails is
logged and the others still get their turn.
"""

import asyncio
import logging
import time
from typing import Optional

from connectors.omnidesk.channel.relay import Relay
from connectors.omnidesk.channel.switchboard import Handoff
from connectors.omnidesk.handoff import HandoffOutcome
from connectors.omnidesk.settings import OmnideskSettings

logger = logging.getLogger(__name__)


def interval_for(settings: OmnideskSettings) -> float:
    """A quarter of the shortest timing it serves, between 0.05 and 5 seconds."""
    shortest = min(
        settings.inactivity_timeout,
        settings.record_interval,
        settings.agent_wait_notice or settings.inactivity_timeout,
    )
    return max(0.05, min(5.0, shortest / 4))


class Sweeper:
    """Looks over every open handoff now and then."""

    def __init__(self, relay: Relay, settings: OmnideskSettings) -> None:
        self.relay = relay
        self.settings = settings

    async def sweep(self, now: Optional[float] = None) -> None:
        """One look over every open handoff, then the tracker writes that are due."""
        at = time.time() if now is None else now
        for handoff in await self.relay.switchboard.all():
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
        await self.relay.record.flush_due()

    async def _look_at(self, handoff: Handoff, at: float) -> None:
        if at - handoff.last_activity >= self.settings.inactivity_timeout:
            logger.info(
                "Chat %s of conversation %s idle for %.0f s: ending it.",
                handoff.chat_session_id,
                handoff.conversation_id,
                at - handoff.last_activity,
            )
            await self.relay.end_chat(handoff, HandoffOutcome.TIMED_OUT)
            return
        wait = self.settings.agent_wait_notice
        if (
            wait
            and wait > 0
            and not handoff.agent_replied
            and at - handoff.started_at >= wait
            and await self.relay.switchboard.claim_wait_notice(handoff.conversation_id)
        ):
            line = self.relay.lines.get(handoff.channel)
            if line is not None:
                await self.relay.notices.tell(
                    line, handoff.conversation_id, "utter_omnidesk_agent_wait"
                )
            logger.info(
                "No agent reply yet in chat %s of conversation %s: customer told.",
                handoff.chat_session_id,
                handoff.conversation_id,
            )

    async def run(self, interval: float) -> None:
        """Sweep every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.error("Sweep of open chats failed: %s: %s", type(error).__name__, error)
