"""Relay mode: whether a customer turn goes to the agent, and the handoff's start and end.

The decisions live here, in plain classes that know neither Sanic nor Rasa;
they see the customer through ``CustomerLine`` and Rasa through ``BotSide``
(sides.py). A customer text turn goes to the agent through ``CustomerTurns``
(turns.py: the turn lease, messageNumber order, a switchboard outage), agent
events reach the customer through ``AgentDelivery`` (delivery.py), relayed
turns reach the tracker through ``TurnRecord`` (record.py), a chat's end and
the hand-back are ``ChatEnding``'s (ending.py), and idle chats are ended by the
``Sweeper`` (sweeper.py). docs/channel.md states the delivery guarantee.
"""

import logging
import time
from typing import Mapping, Optional

from connectors.omnidesk import handoff_events
from connectors.omnidesk.channel.delivery import AgentDelivery
from connectors.omnidesk.channel.ending import ChatEnding
from connectors.omnidesk.channel.files import AgentFileStore
from connectors.omnidesk.channel.hookpoints import EndSession, UploadedFile
from connectors.omnidesk.channel.notices import Notices
from connectors.omnidesk.channel.outbox import Outbox
from connectors.omnidesk.channel.record import TurnRecord, buffer_for
from connectors.omnidesk.channel.sides import BotSide, CustomerLine, RecordEntry
from connectors.omnidesk.channel.switchboard import (
    Handoff,
    NotInRelay,
    Switchboard,
    SwitchboardError,
    new_handoff,
)
from connectors.omnidesk.channel.turns import CustomerTurns, log_refused
from connectors.omnidesk.client import OmnideskClient, OmnideskError
from connectors.omnidesk.handoff import HandoffOutcome, HandoffStarted
from connectors.omnidesk.settings import OmnideskSettings

logger = logging.getLogger(__name__)

__all__ = ["NotInRelay", "Relay"]


class Relay:
    """Relay mode's logic, one per OmnideskInput."""

    def __init__(
        self,
        settings: OmnideskSettings,
        switchboard: Switchboard,
        client: OmnideskClient,
        lines: Mapping[str, CustomerLine],
        bot: BotSide,
        files: AgentFileStore,
        outbox: Outbox,
    ) -> None:
        self.settings = settings
        self.switchboard = switchboard
        self.client = client
        self.lines = dict(lines)
        self.bot = bot
        self.notices = Notices(bot, settings.leave_command)
        self.record = TurnRecord(bot, settings.record_interval, buffer_for(switchboard))
        self.delivery = AgentDelivery(
            switchboard, outbox, files, self.record, settings.new_chat_grace
        )
        self.turns = CustomerTurns(
            settings, switchboard, client, self.lines, self.notices, self.record
        )
        self.ending = ChatEnding(
            settings,
            switchboard,
            client,
            bot,
            self.delivery,
            self.record,
            self.turns,
            self.notices,
            self.lines,
        )

    # -- handoff start ---------------------------------------------------------

    async def start_handoff(
        self, conversation_id: str, channel: str, started: HandoffStarted
    ) -> None:
        handoff = new_handoff(
            conversation_id=conversation_id,
            chat_session_id=started.chat_session_id,
            channel=channel,
            next_message_number=started.next_message_number,
        )
        replaced = await self.switchboard.start(handoff)
        self.turns.seen(conversation_id, True)
        if replaced is not None and replaced.chat_session_id != handoff.chat_session_id:
            logger.warning(
                "Handoff of conversation %s replaced open chat %s with %s.",
                conversation_id,
                replaced.chat_session_id,
                handoff.chat_session_id,
            )
        logger.info(
            "Handoff started: conversation %s on channel %s is with an agent in chat %s.",
            conversation_id,
            channel,
            handoff.chat_session_id,
        )
        handoff_events.relay_started(conversation_id, handoff.chat_session_id, channel)

    # -- customer to agent -----------------------------------------------------

    def is_leave_command(self, text: Optional[str]) -> bool:
        return text is not None and text.strip() == self.settings.leave_command

    async def customer_turn(self, conversation_id: str, text: Optional[str], channel: str) -> bool:
        """Relay the turn when the conversation is with an agent.

        False when it is not (or its chat ended while the turn waited): the bot
        answers the turn. True when the relay took it: sent to the agent, the
        chat left by the leave command, or, when Omnidesk refused it, the
        customer told so and the turn kept in the tracker marked undelivered.

        With the switchboard unreachable, a conversation this process last saw
        with an agent keeps its turn: the customer is told of a delay and the
        turn is retried for ``outage_hold`` seconds; any other turn goes to the
        bot (docs/troubleshooting.md, "Redis is down", says what that risks).
        """
        try:
            return await self._customer_turn(conversation_id, text, channel)
        except SwitchboardError as error:
            return await self.turns.in_outage(
                conversation_id,
                channel,
                error,
                lambda: self._customer_turn(conversation_id, text, channel),
            )

    async def _customer_turn(self, conversation_id: str, text: Optional[str], channel: str) -> bool:
        if self.is_leave_command(text) or text is None or not text.strip():
            return await self._customer_command(conversation_id, text)
        return await self.turns.send(conversation_id, text, channel)

    async def _customer_command(self, conversation_id: str, text: Optional[str]) -> bool:
        """The leave command ends the chat; an empty turn is dropped (neither takes a number)."""
        handoff = await self.switchboard.get(conversation_id)
        self.turns.seen(conversation_id, handoff is not None)
        if handoff is None:
            return False
        if self.is_leave_command(text):
            logger.info(
                "Customer of conversation %s left chat %s.",
                conversation_id,
                handoff.chat_session_id,
            )
            await self.end_chat(handoff, HandoffOutcome.ENDED_BY_CUSTOMER)
            return True
        logger.debug("Empty customer turn in conversation %s not relayed.", conversation_id)
        return True

    async def customer_upload(self, conversation_id: str, upload: UploadedFile) -> None:
        """Send a customer's file to the agent; NotInRelay or OmnideskError on failure."""
        handoff = await self.switchboard.get(conversation_id)
        if handoff is None:
            raise NotInRelay(conversation_id)
        try:
            await self.client.add_attachment(
                chat_session_id=handoff.chat_session_id,
                filename=upload.filename,
                content=upload.content,
                content_type=upload.content_type,
            )
        except OmnideskError as error:
            log_refused("customer file", handoff, error)
            await self.notices.tell_on(
                self.lines, handoff.channel, conversation_id, "utter_omnidesk_delivery_failed"
            )
            raise
        await self.switchboard.touch(conversation_id)
        await self.record.add(
            conversation_id,
            RecordEntry(
                "customer", f"[file: {upload.filename}]", handoff.chat_session_id, time.time()
            ),
        )
        logger.info(
            "Customer file relayed: conversation %s, chat %s, %d bytes.",
            conversation_id,
            handoff.chat_session_id,
            len(upload.content),
        )

    async def customer_event(self, conversation_id: str, event: str) -> None:
        """Relay a typing or widget event; NotInRelay or OmnideskError on failure."""
        handoff = await self.switchboard.get(conversation_id)
        if handoff is None:
            raise NotInRelay(conversation_id)
        try:
            await self.client.notify_user_new_chat_event(
                chat_session_id=handoff.chat_session_id, event=event
            )
        except OmnideskError as error:
            log_refused(f"customer event {event}", handoff, error)
            raise
        logger.debug(
            "Customer event %s relayed: conversation %s, chat %s.",
            event,
            conversation_id,
            handoff.chat_session_id,
        )

    # -- the end of a chat -----------------------------------------------------

    async def agent_end(self, end: EndSession) -> None:
        """The agent ended the chat: hand back in the background (NotInRelay if not open)."""
        await self.ending.agent_end(end)

    async def end_chat(self, handoff: Handoff, outcome: HandoffOutcome) -> bool:
        """End relay mode once; False when someone else already ended it."""
        return await self.ending.end(handoff, outcome)

    async def handoff_not_registered(
        self, conversation_id: str, channel: str, started: HandoffStarted, error: Exception
    ) -> None:
        """The action opened a chat the switchboard could not take: end it, tell the customer.

        Left open, the chat would wait on the agent's desk for a customer whose
        turns go to the bot.
        """
        logger.error(
            "Handoff of conversation %s to chat %s could not be registered (%s); "
            "ending the chat and telling the customer.",
            conversation_id,
            started.chat_session_id,
            error,
        )
        handoff_events.ended(conversation_id, started.chat_session_id, "failed", error)
        try:
            await self.client.notify_user_end_chat(chat_session_id=started.chat_session_id)
        except OmnideskError as end_error:
            logger.error(
                "Could not end orphan chat %s of conversation %s: %s",
                started.chat_session_id,
                conversation_id,
                end_error,
            )
        await self.notices.tell_on(
            self.lines, channel, conversation_id, "utter_omnidesk_handoff_failed"
        )

    # -- lifecycle -------------------------------------------------------------

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until background deliveries and ends are done (tests and shutdown use it)."""
        deadline = time.monotonic() + timeout
        await self.delivery.wait_idle(timeout)
        await self.ending.wait_idle(max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        """Let deliveries and ends under way finish (bounded), then write what is buffered."""
        await self.delivery.close()
        await self.ending.wait_idle(5.0)
        await self.record.flush_all()
