"""The connector's own messages to the customer, and how they are sent.

Each is a response of the bot's domain when the domain has it (so a team
rewords or translates it without code), else the default below. Telling the
customer never raises: a notice that cannot be sent is logged with the
conversation, and the caller goes on.
"""

import asyncio
import logging
from typing import Dict, Mapping

from connectors.omnidesk.channel.sides import BotSide, CustomerLine

logger = logging.getLogger(__name__)

NOTICE_TIMEOUT = 10.0  # seconds a notice may take to reach the customer's channel
END_NOTICE = "utter_omnidesk_chat_ended"

DEFAULT_TEXTS: Dict[str, str] = {
    "utter_omnidesk_delivery_failed": (
        "Sorry, your last message did not reach the agent. Please try again in a moment."
    ),
    "utter_omnidesk_agent_wait": (
        "No one has picked up yet. You can keep waiting, or type {leave_command} "
        "to go back to the assistant."
    ),
    "utter_omnidesk_chat_ended": "The chat with our agent has ended. You are back with the assistant.",
    "utter_omnidesk_upload_rejected": "Sorry, that file could not be sent to the agent.",
    "utter_omnidesk_delayed": (
        "Sorry, we are having trouble reaching the agent. Your message will follow shortly."
    ),
    "utter_omnidesk_handoff_failed": (
        "Sorry, I could not connect you to a colleague after all. Please try again in a moment."
    ),
}


class Notices:
    """The texts of the connector's notices, and telling them to a customer."""

    def __init__(self, bot: BotSide, leave_command: str) -> None:
        self._bot = bot
        self._leave_command = leave_command

    def text(self, name: str) -> str:
        """The domain's response ``name`` if it has one, else the default text."""
        from_domain = self._bot.response_text(name)
        text = from_domain or DEFAULT_TEXTS[name]
        return text.replace("{leave_command}", self._leave_command)

    async def tell(self, line: CustomerLine, conversation_id: str, name: str) -> None:
        """Send notice ``name`` to the customer; a failure is logged, never raised."""
        # The outbox's line keeps what kind of notice it is, for the delivery metrics.
        send_notice = getattr(line, "send_notice", None)
        try:
            if send_notice is not None:
                kind = "end" if name == END_NOTICE else "notice"
                sending = send_notice(conversation_id, self.text(name), kind)
            else:
                sending = line.send_text(conversation_id, self.text(name))
            await asyncio.wait_for(sending, timeout=NOTICE_TIMEOUT)
        except Exception as error:
            logger.error(
                "Could not tell the customer of conversation %s (%s): %s: %s",
                conversation_id,
                name,
                type(error).__name__,
                error,
            )

    async def tell_on(
        self, lines: Mapping[str, CustomerLine], channel: str, conversation_id: str, name: str
    ) -> None:
        """``tell`` on the customer's channel, when the connector has a line to it."""
        line = lines.get(channel)
        if line is not None:
            await self.tell(line, conversation_id, name)
