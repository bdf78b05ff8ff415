"""The end of a chat: relay mode ended once, the customer handed back to the bot.

The agent's endSession (``agent_end``, in the background), the customer's
leave command and the sweeper's timeout (``end``) all end a chat here: the
switchboard forgets it, Omnidesk is told when the end is ours, the deliveries
under way to the customer go first, the relayed turns are written to the
tracker, and the bot takes the conversation back. From the switchboard's end
on, every step that fails is logged and the end goes on: a customer left
"with an agent" in the bot's slots could never escalate again.
"""

import asyncio
import contextlib
import logging
from typing import Mapping, Set

from connectors.omnidesk import handoff_events
from connectors.omnidesk.channel.delivery import AgentDelivery
from connectors.omnidesk.channel.hookpoints import EndSession
from connectors.omnidesk.channel.notices import Notices
from connectors.omnidesk.channel.record import TurnRecord
from connectors.omnidesk.channel.sides import BotSide, CustomerLine
from connectors.omnidesk.channel.switchboard import Handoff, Switchboard
from connectors.omnidesk.channel.turns import CustomerTurns, log_refused
from connectors.omnidesk.client import OmnideskClient, OmnideskError
from connectors.omnidesk.handoff import HandoffOutcome
from connectors.omnidesk.settings import OmnideskSettings

logger = logging.getLogger(__name__)

__all__ = ["ChatEnding"]


class ChatEnding:
    """Ends chats once and hands the customer back; one per Relay."""

    def __init__(
        self,
        settings: OmnideskSettings,
        switchboard: Switchboard,
        client: OmnideskClient,
        bot: BotSide,
        delivery: AgentDelivery,
        record: TurnRecord,
        turns: CustomerTurns,
        notices: Notices,
        lines: Mapping[str, CustomerLine],
    ) -> None:
        self.settings = settings
        self.switchboard = switchboard
        self.client = client
        self.bot = bot
        self.delivery = delivery
        self.record = record
        self.turns = turns
        self.notices = notices
        self.lines = lines
        self._tasks: Set[asyncio.Future[None]] = set()

    async def agent_end(self, end: EndSession) -> None:
        """The agent ended the chat: hand back in the background (NotInRelay if not open)."""
        handoff = await self.switchboard.wait_for_chat(end.session_id, self.settings.new_chat_grace)
        task = asyncio.ensure_future(self._end_logged(handoff, HandoffOutcome.ENDED_BY_AGENT))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _end_logged(self, handoff: Handoff, outcome: HandoffOutcome) -> None:
        try:
            await self.end(handoff, outcome)
        except Exception as error:
            logger.error(
                "Could not end chat %s of conversation %s: %s: %s",
                handoff.chat_session_id,
                handoff.conversation_id,
                type(error).__name__,
                error,
            )

    async def end(self, handoff: Handoff, outcome: HandoffOutcome) -> bool:
        """End relay mode once; False when someone else already ended it."""
        ended = await self.switchboard.end(handoff.conversation_id, handoff.chat_session_id)
        if ended is None:
            return False
        self.turns.seen(ended.conversation_id, False)
        if outcome is not HandoffOutcome.ENDED_BY_AGENT:
            try:
                await self.client.notify_user_end_chat(chat_session_id=ended.chat_session_id)
            except OmnideskError as error:
                # The chat is over for the customer either way; the agent's desk
                # may show it open until Omnidesk closes it.
                log_refused("end of chat", ended, error)
        # From here on the customer is handed back whatever fails on the way: a
        # customer left "with an agent" in the bot's slots could never escalate again.
        try:
            # The end comes after the deliveries already under way.
            await self.delivery.drain(ended.conversation_id)
        except Exception as error:
            _log_step_failure("drain the deliveries of", ended, error)
        # A failed write is logged in flush and stays buffered for the sweeper: the
        # customer is handed back to the bot whatever the tracker store says.
        with contextlib.suppress(Exception):
            await self.record.flush(ended.conversation_id)
        try:
            self.delivery.forget(ended)
        except Exception as error:
            _log_step_failure("forget the deliveries of", ended, error)
        logger.info(
            "Handoff ended (%s): conversation %s, chat %s.",
            outcome.value,
            ended.conversation_id,
            ended.chat_session_id,
        )
        handoff_events.ended(ended.conversation_id, ended.chat_session_id, outcome.value)
        try:
            handed_back = await self.bot.hand_back(ended, outcome)
        except Exception as error:
            _log_step_failure("hand back to the bot", ended, error)
            handed_back = False
        if not handed_back:
            await self.notices.tell_on(
                self.lines, ended.channel, ended.conversation_id, "utter_omnidesk_chat_ended"
            )
        return True

    async def wait_idle(self, timeout: float) -> None:
        """Wait (bounded) for the ends running in the background."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


def _log_step_failure(what: str, handoff: Handoff, error: Exception) -> None:
    logger.error(
        "Ending chat %s of conversation %s: could not %s it (%s: %s); the end goes on.",
        handoff.chat_session_id,
        handoff.conversation_id,
        what,
        type(error).__name__,
        error,
    )
    handoff_events.failure(f"end: {what}", handoff.conversation_id, handoff.chat_session_id, error)
