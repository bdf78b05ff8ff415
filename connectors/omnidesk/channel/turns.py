"""Customer turns to the agent: numbered, in order, and kept through a switchboard outage.

``CustomerTurns`` sends one customer turn of a conversation with an agent:
it takes the chat's turn lease with the turn's messageNumber
(switchboard.begin_turn), one sender at a time across every instance, sends
the message under it, gives the lease back, keeps the turn for the tracker
(record.py) and tells the customer when Omnidesk refused it. It also
remembers the handoff this process last saw of each conversation, so that a
turn arriving while the switchboard is unreachable is kept and retried rather
than given to the bot. The relay (relay.py) decides whether a turn comes here.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Awaitable, Callable, Optional

from connectors.omnidesk import handoff_events, rules
from connectors.omnidesk.channel.notices import DELAYED, DELIVERY_FAILED, Notices
from connectors.omnidesk.channel.record import TurnRecord
from connectors.omnidesk.channel.sides import RecordEntry
from connectors.omnidesk.channel.switchboard import (
    Handoff,
    Switchboard,
    SwitchboardError,
    TurnTicket,
)
from connectors.omnidesk.client import OmnideskClient, OmnideskError
from connectors.omnidesk.settings import OmnideskSettings

logger = logging.getLogger(__name__)

# The relay stops waiting for a customer turn's call this long after the
# client's retry budget; the turn lease lasts LEASE_MARGIN longer still, so it
# only expires under a holder that stalled or died.
CALL_GRACE = 1.0
LEASE_MARGIN = 2.0

# A turn of a conversation with an agent, kept while the switchboard is
# unreachable: retried every OUTAGE_RETRY_INTERVAL s for settings.outage_hold.
OUTAGE_RETRY_INTERVAL = 1.0
OUTAGE_LOG_INTERVAL = 10.0
MAX_REMEMBERED = 10_000

__all__ = ["CustomerTurns", "log_refused"]


def log_refused(what: str, handoff: Handoff, error: OmnideskError) -> None:
    """One error line for something of the customer's Omnidesk did not take."""
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
    handoff_events.failure(
        what,
        handoff.conversation_id,
        handoff.chat_session_id,
        error,
        call=getattr(error, "call", None),
        status=getattr(error, "status", None),
    )


class CustomerTurns:
    """Sends customer turns under their chat's turn lease; one per Relay."""

    def __init__(
        self,
        settings: OmnideskSettings,
        switchboard: Switchboard,
        client: OmnideskClient,
        notices: Notices,
        record: TurnRecord,
    ) -> None:
        self.settings = settings
        self.switchboard = switchboard
        self.client = client
        self.notices = notices
        self.record = record
        # The handoff this process last saw of each conversation with an agent,
        # oldest first, for a switchboard outage.
        self._with_agent: OrderedDict[str, Handoff] = OrderedDict()
        self._outage_logged_at = -OUTAGE_LOG_INTERVAL

    # -- a switchboard outage ----------------------------------------------------

    def seen(self, conversation_id: str, handoff: Optional[Handoff]) -> None:
        """Remember what the switchboard last said of a conversation, for an outage."""
        self._with_agent.pop(conversation_id, None)
        if handoff is not None:
            self._with_agent[conversation_id] = handoff
            if len(self._with_agent) > MAX_REMEMBERED:
                self._with_agent.popitem(last=False)

    async def in_outage(
        self,
        conversation_id: str,
        error: SwitchboardError,
        retry: Callable[[], Awaitable[bool]],
    ) -> bool:
        """A turn that met an unreachable switchboard; ``retry`` takes it again.

        A conversation last seen with an agent keeps its turn: the customer is
        told of a delay and ``retry`` is called for ``settings.outage_hold`` seconds;
        any other turn goes to the bot (False).
        """
        self._log_outage(error)
        handoff = self._with_agent.get(conversation_id)
        if handoff is None:
            return False  # assumed with the bot
        await self.notices.tell(handoff, DELAYED)
        deadline = time.monotonic() + self.settings.outage_hold
        while time.monotonic() < deadline:
            await asyncio.sleep(min(OUTAGE_RETRY_INTERVAL, max(0.0, deadline - time.monotonic())))
            try:
                relayed = await retry()
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
            self.settings.outage_hold,
            conversation_id,
        )
        await self.notices.tell(handoff, DELIVERY_FAILED)
        return True

    def _log_outage(self, error: SwitchboardError) -> None:
        """One line per outage (at most one every OUTAGE_LOG_INTERVAL s), no traceback."""
        now = time.monotonic()
        if now - self._outage_logged_at >= OUTAGE_LOG_INTERVAL:
            self._outage_logged_at = now
            logger.error("%s. Bot-mode turns go to the bot meanwhile.", error)

    # -- one numbered turn -------------------------------------------------------

    async def send(self, conversation_id: str, text: str) -> bool:
        """Send a text turn when the conversation is with an agent; False when it is not.

        True when the turn was taken: sent to the agent or, when Omnidesk
        refused it, the customer told so and the turn kept in the tracker
        marked undelivered. SwitchboardError when the switchboard is unreachable.
        """
        ticket = await self._take_turn(conversation_id)
        self.seen(conversation_id, None if ticket is None else ticket.handoff)
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
            await self.notices.tell(handoff, DELIVERY_FAILED)
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
            log_refused("customer message", handoff, error)
        except asyncio.TimeoutError:
            logger.error(
                "Omnidesk did not take the customer message of conversation %s (chat %s) "
                "within the retry budget of %g s.",
                handoff.conversation_id,
                handoff.chat_session_id,
                self.settings.retry_budget,
            )
            handoff_events.failure(
                "customer message",
                handoff.conversation_id,
                handoff.chat_session_id,
                reason="retry budget spent",
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
            handoff_events.customer_turn_relayed(
                handoff.conversation_id, handoff.chat_session_id, sent_number, text
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
