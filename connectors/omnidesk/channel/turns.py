"""Customer turns to the agent: one numbered message per turn, and what an outage keeps.

``CustomerTurns`` sends one customer text turn of a conversation with an agent,
once the turn is first in its conversation's line (switchboard.py: the place
came with the handoff and the turn's messageNumber), keeps it for the tracker
(record.py) and tells the customer when Omnidesk refused it. It also remembers
the handoff this process last saw of each conversation, so that a turn
arriving while the switchboard is unreachable is kept and retried rather than
given to the bot. The relay (relay.py) decides whether a turn comes here.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Optional

from connectors.omnidesk import handoff_events, rules
from connectors.omnidesk.channel.notices import DELIVERY_FAILED, Notices
from connectors.omnidesk.channel.record import TurnRecord
from connectors.omnidesk.channel.sides import RecordEntry
from connectors.omnidesk.channel.switchboard import Handoff, Place, SwitchboardError
from connectors.omnidesk.client import OmnideskClient, OmnideskError
from connectors.omnidesk.settings import OmnideskSettings

logger = logging.getLogger(__name__)

# The relay stops waiting for a customer turn's call this long after the
# client's retry budget.
CALL_GRACE = 1.0
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
    """Sends customer turns that are first in line; one per Relay."""

    def __init__(
        self,
        settings: OmnideskSettings,
        client: OmnideskClient,
        notices: Notices,
        record: TurnRecord,
    ) -> None:
        self.settings = settings
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

    def last_seen(self, conversation_id: str) -> Optional[Handoff]:
        """The handoff this process last saw of the conversation, if it was with an agent."""
        return self._with_agent.get(conversation_id)

    def log_outage(self, error: SwitchboardError) -> None:
        """One line per outage (at most one every OUTAGE_LOG_INTERVAL s), no traceback."""
        now = time.monotonic()
        if now - self._outage_logged_at >= OUTAGE_LOG_INTERVAL:
            self._outage_logged_at = now
            logger.error("%s. Bot-mode turns go to the bot meanwhile.", error)

    # -- one numbered turn -------------------------------------------------------

    async def send(self, place: Place, text: str) -> bool:
        """Send the text of a turn that is first in line to its chat's agent.

        True when Omnidesk took it. When it did not, the customer is told and the
        turn is kept for the tracker marked undelivered; either way it is kept
        when the place is given up.
        """
        handoff = place.handoff
        assert handoff is not None, "a relayed turn is served with its handoff"
        number = place.message_number
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
        self.record.keep(
            place,
            RecordEntry(
                "customer",
                text,
                handoff.chat_session_id,
                time.time(),
                message_number=number,
                delivered=delivered,
            ),
        )
        if delivered:
            logger.debug(
                "Customer message %s relayed: conversation %s, chat %s.",
                sent_number if sent_number is not None else "(unnumbered)",
                handoff.conversation_id,
                handoff.chat_session_id,
            )
            handoff_events.customer_turn_relayed(
                handoff.conversation_id, handoff.chat_session_id, sent_number, text
            )
        else:
            await self.notices.tell(handoff, DELIVERY_FAILED)
        return delivered
