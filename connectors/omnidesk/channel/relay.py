"""Relay mode: whether a customer turn goes to the agent, and the handoff's start and end.

The decisions live here, in plain classes that know neither Sanic nor Rasa;
they see the customer through ``CustomerLine`` and Rasa through ``BotSide``
(sides.py). Agent events reach the customer through ``AgentDelivery``
(delivery.py), relayed turns reach the tracker through ``TurnRecord``
(record.py), and idle chats are ended by the ``Sweeper`` (sweeper.py).

Ordering: customer turns of one chat take their messageNumber and are sent
under the chat's turn lease (switchboard.begin_turn), one sender at a time
across every instance, so Omnidesk sees them in order. docs/channel.md states
the delivery guarantee.
"""

import asyncio
import contextlib
import logging
import time
from typing import Dict, Mapping, Optional, Set

from connectors.omnidesk import rules
from connectors.omnidesk.channel.delivery import AgentDelivery
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
    TurnTicket,
    new_handoff,
)
from connectors.omnidesk.client import OmnideskClient, OmnideskError
from connectors.omnidesk.handoff import HandoffOutcome, HandoffStarted
from connectors.omnidesk.settings import OmnideskSettings

logger = logging.getLogger(__name__)

# The relay stops waiting for a customer turn's call this long after the
# client's retry budget; the turn lease lasts LEASE_MARGIN longer still, so it
# only expires under a holder that stalled or died.
CALL_GRACE = 1.0
LEASE_MARGIN = 2.0

# A turn of a conversation with an agent, kept while the switchboard is
# unreachable: retried every OUTAGE_RETRY_INTERVAL s for OUTAGE_RETRY_SECONDS.
OUTAGE_RETRY_SECONDS = 30.0
OUTAGE_RETRY_INTERVAL = 1.0
OUTAGE_LOG_INTERVAL = 10.0
MAX_REMEMBERED = 10_000

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
        self._ending: Set[asyncio.Future[None]] = set()
        # Conversations this process last saw with an agent, for a switchboard outage.
        self._with_agent: Dict[str, float] = {}
        self._outage_logged_at = -OUTAGE_LOG_INTERVAL
        self.outage_retry_seconds = OUTAGE_RETRY_SECONDS

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
        self._seen(conversation_id, True)
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
        turn is retried for ``outage_retry_seconds``; any other turn goes to the
        bot (docs/troubleshooting.md, "Redis is down", says what that risks).
        """
        try:
            return await self._customer_turn(conversation_id, text, channel)
        except SwitchboardError as error:
            return await self._turn_in_outage(conversation_id, text, channel, error)

    async def _turn_in_outage(
        self, conversation_id: str, text: Optional[str], channel: str, error: SwitchboardError
    ) -> bool:
        self._log_outage(error)
        if conversation_id not in self._with_agent:
            return False  # assumed with the bot
        line = self.lines.get(channel)
        if line is not None:
            await self.notices.tell(line, conversation_id, "utter_omnidesk_delayed")
        deadline = time.monotonic() + self.outage_retry_seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(min(OUTAGE_RETRY_INTERVAL, max(0.0, deadline - time.monotonic())))
            try:
                relayed = await self._customer_turn(conversation_id, text, channel)
            except SwitchboardError as again:
                self._log_outage(again)
                continue
            logger.info(
                "Switchboard back: the turn of conversation %s kept during the outage went on.",
                conversation_id,
            )
            return relayed
        logger.error(
            "Switchboard unreachable for %.0f s: a turn of conversation %s was not relayed; "
            "the customer was told.",
            self.outage_retry_seconds,
            conversation_id,
        )
        if line is not None:
            await self.notices.tell(line, conversation_id, "utter_omnidesk_delivery_failed")
        return True

    def _log_outage(self, error: SwitchboardError) -> None:
        """One line per outage (at most one every OUTAGE_LOG_INTERVAL s), no traceback."""
        now = time.monotonic()
        if now - self._outage_logged_at >= OUTAGE_LOG_INTERVAL:
            self._outage_logged_at = now
            logger.error("%s. Bot-mode turns go to the bot meanwhile.", error)

    def _seen(self, conversation_id: str, with_agent: bool) -> None:
        """Remember what the switchboard last said of a conversation, for an outage."""
        self._with_agent.pop(conversation_id, None)
        if with_agent:
            # Insertion order is recency order: the oldest is first.
            self._with_agent[conversation_id] = time.monotonic()
            if len(self._with_agent) > MAX_REMEMBERED:
                del self._with_agent[next(iter(self._with_agent))]

    async def _customer_turn(self, conversation_id: str, text: Optional[str], channel: str) -> bool:
        if self.is_leave_command(text) or text is None or not text.strip():
            return await self._customer_command(conversation_id, text)
        ticket = await self._take_turn(conversation_id)
        self._seen(conversation_id, ticket is not None)
        if ticket is None:
            return False  # with the bot, or ended while this turn waited for the lease
        handoff = ticket.handoff
        number = ticket.message_number
        delivered = False
        if ticket.granted:
            delivered = await self._send_turn(handoff, text, number, ticket.fence)
        else:
            logger.error(
                "Customer turn of conversation %s not sent: chat %s stayed busy for %.0f s.",
                conversation_id,
                handoff.chat_session_id,
                self.turn_lease,
            )
        entry = RecordEntry(
            "customer",
            text,
            handoff.chat_session_id,
            time.time(),
            message_number=number,
            delivered=delivered,
        )
        try:
            await self.record.add(conversation_id, entry)
        except SwitchboardError as error:
            # Not raised on: the outage path would send the turn a second time.
            logger.error(
                "Customer turn %s of conversation %s (chat %s) could not be kept for the "
                "tracker: %s",
                number,
                conversation_id,
                handoff.chat_session_id,
                error,
            )
        if not delivered:
            line = self.lines.get(channel)
            if line is not None:
                await self.notices.tell(line, conversation_id, "utter_omnidesk_delivery_failed")
        return True

    async def _customer_command(self, conversation_id: str, text: Optional[str]) -> bool:
        """The leave command ends the chat; an empty turn is dropped (neither takes a number)."""
        handoff = await self.switchboard.get(conversation_id)
        self._seen(conversation_id, handoff is not None)
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

    @property
    def turn_lease(self) -> float:
        """How long one turn may hold its chat: the client's retry budget and a margin."""
        return self.settings.retry_budget + CALL_GRACE + LEASE_MARGIN

    async def _take_turn(self, conversation_id: str) -> Optional[TurnTicket]:
        """The chat's turn lease with this turn's number; waits while another sender has it.

        A lease lasts at most ``turn_lease``, so the wait ends by then unless
        other senders keep winning it; a ticket that is not granted means that.
        """
        lease = self.turn_lease
        deadline = time.monotonic() + lease + CALL_GRACE
        while True:
            ticket = await self.switchboard.begin_turn(conversation_id, lease)
            if ticket is None or ticket.granted:
                return ticket
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ticket
            await self.switchboard.wait_turn(conversation_id, remaining)

    async def _send_turn(
        self, handoff: Handoff, text: str, number: Optional[int], fence: int
    ) -> bool:
        """Send one numbered turn under its lease, then give the lease back.

        The client retries with the same form, so a retry carries the same
        messageNumber. The call is cut at the retry budget and a second, so it
        ends before the lease could expire and a later turn overtake it.
        """
        # Omnidesk caps messageNumber at 50 and calls it optional: past the cap
        # the message goes without it rather than being refused.
        sent_number = number if number is not None and number <= rules.MESSAGE_NUMBER_MAX else None
        delivered = False
        try:
            await asyncio.wait_for(
                self.client.notify_user_new_chat_message(
                    chat_session_id=handoff.chat_session_id,
                    message=text,
                    message_number=sent_number,
                ),
                timeout=self.settings.retry_budget + CALL_GRACE,
            )
            delivered = True
        except OmnideskError as error:
            self._log_failure("customer message", handoff, error)
        except asyncio.TimeoutError:
            logger.error(
                "Omnidesk did not take the customer message of conversation %s (chat %s) "
                "within the retry budget of %g s.",
                handoff.conversation_id,
                handoff.chat_session_id,
                self.settings.retry_budget,
            )
        finally:
            await self._finish_turn(handoff, fence)
        if delivered:
            logger.info(
                "Customer message %s relayed: conversation %s, chat %s.",
                sent_number if sent_number is not None else "(unnumbered)",
                handoff.conversation_id,
                handoff.chat_session_id,
            )
        return delivered

    async def _finish_turn(self, handoff: Handoff, fence: int) -> None:
        try:
            kept = await self.switchboard.finish_turn(handoff.conversation_id, fence)
        except SwitchboardError as error:
            # The lease expires on its own; the chat's next turn waits until then.
            logger.warning(
                "Could not give back the turn lease of chat %s: %s", handoff.chat_session_id, error
            )
            return
        if not kept:
            logger.warning(
                "The turn lease of chat %s (conversation %s) expired before its turn was sent: "
                "a later turn may have reached Omnidesk first.",
                handoff.chat_session_id,
                handoff.conversation_id,
            )

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
            self._log_failure("customer file", handoff, error)
            line = self.lines.get(handoff.channel)
            if line is not None:
                await self.notices.tell(line, conversation_id, "utter_omnidesk_delivery_failed")
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
            self._log_failure(f"customer event {event}", handoff, error)
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
        handoff = await self.switchboard.wait_for_chat(end.session_id, self.settings.new_chat_grace)
        task = asyncio.ensure_future(self._end_logged(handoff, HandoffOutcome.ENDED_BY_AGENT))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _end_logged(self, handoff: Handoff, outcome: HandoffOutcome) -> None:
        try:
            await self.end_chat(handoff, outcome)
        except Exception as error:
            logger.error(
                "Could not end chat %s of conversation %s: %s: %s",
                handoff.chat_session_id,
                handoff.conversation_id,
                type(error).__name__,
                error,
            )

    async def end_chat(self, handoff: Handoff, outcome: HandoffOutcome) -> bool:
        """End relay mode once; False when someone else already ended it."""
        ended = await self.switchboard.end(handoff.conversation_id, handoff.chat_session_id)
        if ended is None:
            return False
        self._seen(ended.conversation_id, False)
        if outcome is not HandoffOutcome.ENDED_BY_AGENT:
            try:
                await self.client.notify_user_end_chat(chat_session_id=ended.chat_session_id)
            except OmnideskError as error:
                # The chat is over for the customer either way; the agent's desk
                # may show it open until Omnidesk closes it.
                self._log_failure("end of chat", ended, error)
        # From here on the customer is handed back whatever fails on the way: a
        # customer left "with an agent" in the bot's slots could never escalate again.
        try:
            # The end comes after the deliveries already under way.
            await self.delivery.drain(ended.conversation_id)
        except Exception as error:
            self._log_step_failure("drain the deliveries of", ended, error)
        # A failed write is logged in flush and stays buffered for the sweeper: the
        # customer is handed back to the bot whatever the tracker store says.
        with contextlib.suppress(Exception):
            await self.record.flush(ended.conversation_id)
        try:
            self.delivery.forget(ended)
        except Exception as error:
            self._log_step_failure("forget the deliveries of", ended, error)
        logger.info(
            "Handoff ended (%s): conversation %s, chat %s.",
            outcome.value,
            ended.conversation_id,
            ended.chat_session_id,
        )
        try:
            handed_back = await self.bot.hand_back(ended, outcome)
        except Exception as error:
            self._log_step_failure("hand back to the bot", ended, error)
            handed_back = False
        if not handed_back:
            line = self.lines.get(ended.channel)
            if line is not None:
                await self.notices.tell(line, ended.conversation_id, "utter_omnidesk_chat_ended")
        return True

    @staticmethod
    def _log_step_failure(what: str, handoff: Handoff, error: Exception) -> None:
        logger.error(
            "Ending chat %s of conversation %s: could not %s it (%s: %s); the end goes on.",
            handoff.chat_session_id,
            handoff.conversation_id,
            what,
            type(error).__name__,
            error,
        )

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
        try:
            await self.client.notify_user_end_chat(chat_session_id=started.chat_session_id)
        except OmnideskError as end_error:
            logger.error(
                "Could not end orphan chat %s of conversation %s: %s",
                started.chat_session_id,
                conversation_id,
                end_error,
            )
        line = self.lines.get(channel)
        if line is not None:
            await self.notices.tell(line, conversation_id, "utter_omnidesk_handoff_failed")

    # -- lifecycle -------------------------------------------------------------

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until background deliveries and ends are done (tests and shutdown use it)."""
        deadline = time.monotonic() + timeout
        await self.delivery.wait_idle(timeout)
        if self._ending:
            await asyncio.wait(set(self._ending), timeout=max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        """Let deliveries and ends under way finish (bounded), then write what is buffered."""
        await self.delivery.close()
        if self._ending:
            await asyncio.wait(set(self._ending), timeout=5.0)
        await self.record.flush_all()

    @staticmethod
    def _log_failure(what: str, handoff: Handoff, error: OmnideskError) -> None:
        logger.error(
            "Omnidesk did not take the %s of conversation %s (chat %s): call %s, status %s, "
            "Omnidesk said %r.",
            what,
            handoff.conversation_id,
            handoff.chat_session_id,
            getattr(error, "call", "?"),
            getattr(error, "status", None),
            getattr(error, "omnidesk_message", None),
        )
