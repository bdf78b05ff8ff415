"""The connector's own messages to the customer, and how they are told.

Each is a response of the bot's domain when the domain has it (so a team
rewords or translates it without code), else the default below. A notice is
about one handoff and goes through that conversation's outbox, after whatever
the agent sent before it. Telling the customer never raises: a notice that
cannot be stored goes to the customer's channel directly, and one that cannot
be sent at all is logged with the conversation and the chat; the caller goes on.
"""

import logging
from typing import Dict

from connectors.omnidesk.channel.outbox import Outbox, ToCustomer
from connectors.omnidesk.channel.sides import BotSide
from connectors.omnidesk.channel.switchboard import Handoff, SwitchboardError

logger = logging.getLogger(__name__)

DELIVERY_FAILED = "utter_omnidesk_delivery_failed"
AGENT_WAIT = "utter_omnidesk_agent_wait"
CHAT_ENDED = "utter_omnidesk_chat_ended"
UPLOAD_REJECTED = "utter_omnidesk_upload_rejected"
DELAYED = "utter_omnidesk_delayed"
HANDOFF_FAILED = "utter_omnidesk_handoff_failed"
TURN_NOT_HANDLED = "utter_omnidesk_turn_not_handled"

DEFAULT_TEXTS: Dict[str, str] = {
    DELIVERY_FAILED: (
        "Sorry, your last message did not reach the agent. Please try again in a moment."
    ),
    AGENT_WAIT: (
        "No one has picked up yet. You can keep waiting, or type {leave_command} "
        "to go back to the assistant."
    ),
    CHAT_ENDED: "The chat with our agent has ended. You are back with the assistant.",
    UPLOAD_REJECTED: "Sorry, that file could not be sent to the agent.",
    DELAYED: ("Sorry, we are having trouble reaching the agent. Your message will follow shortly."),
    HANDOFF_FAILED: (
        "Sorry, I could not connect you to a colleague after all. Please try again in a moment."
    ),
    TURN_NOT_HANDLED: (
        "Sorry, your last message could not be handled in time. Please send it again."
    ),
}


class Notices:
    """The texts of the connector's notices, and telling them to a handoff's customer."""

    def __init__(self, bot: BotSide, leave_command: str, outbox: Outbox) -> None:
        self._bot = bot
        self._leave_command = leave_command
        self._outbox = outbox

    def text(self, name: str) -> str:
        """The domain's response ``name`` if it has one, else the default text."""
        from_domain = self._bot.response_text(name)
        text = from_domain or DEFAULT_TEXTS[name]
        return text.replace("{leave_command}", self._leave_command)

    async def tell(self, handoff: Handoff, name: str) -> None:
        """Tell the customer of ``handoff`` notice ``name``; a failure is logged, never raised."""
        item = ToCustomer(
            "text", text=self.text(name), notice="end" if name == CHAT_ENDED else "notice"
        )
        conversation_id = handoff.conversation_id
        try:
            await self._outbox.put(
                conversation_id, handoff.channel, handoff.chat_session_id, item, handoff.route
            )
            return
        except SwitchboardError as error:
            logger.warning(
                "Outbox unreachable (%s): notice %s to conversation %s goes to its channel directly.",
                error,
                name,
                conversation_id,
            )
        try:
            await self._outbox.send_now(conversation_id, handoff.channel, item, handoff.route)
        except Exception as error:
            logger.error(
                "Could not tell the customer of conversation %s (chat %s) %s: %s: %s",
                conversation_id,
                handoff.chat_session_id,
                name,
                type(error).__name__,
                error,
            )
