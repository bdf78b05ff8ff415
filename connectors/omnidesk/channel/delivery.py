"""Agent events to the customer: messages, files and typing, through the outbox.

A hookpoint call becomes one ``ToCustomer`` value, put in the conversation's
outbox (outbox.py) before the hookpoint answers: ``ok`` means it is stored,
and a store that failed raises SwitchboardError (503). The outbox delivers it
in order once the customer's channel can take it.
"""

import logging
import time

from connectors.omnidesk import handoff_events
from connectors.omnidesk.channel.files import AgentFileStore
from connectors.omnidesk.channel.hookpoints import (
    AgentIdentity,
    AgentMessage,
    AgentTyping,
    AgentUpload,
)
from connectors.omnidesk.channel.outbox import Outbox
from connectors.omnidesk.channel.record import TurnRecord
from connectors.omnidesk.channel.sides import FileLink, RecordEntry
from connectors.omnidesk.channel.switchboard import Handoff, Switchboard
from connectors.omnidesk.channel.to_customer import ToCustomer

logger = logging.getLogger(__name__)

__all__ = ["AgentDelivery"]


class AgentDelivery:
    """Puts agent events in the customer's outbox, per conversation in arrival order."""

    def __init__(
        self,
        switchboard: Switchboard,
        outbox: Outbox,
        files: AgentFileStore,
        record: TurnRecord,
        new_chat_grace: float,
    ) -> None:
        self.switchboard = switchboard
        self.outbox = outbox
        self.files = files
        self.record = record
        self.new_chat_grace = new_chat_grace

    async def message(self, message: AgentMessage) -> None:
        handoff = await self.switchboard.wait_for_chat(message.session_id, self.new_chat_grace)
        await self._put(handoff, ToCustomer("text", text=message.message, agent=message.agent))
        _first_reply(handoff)
        # The handoff keeps the agent (switchboard.Handoff.agent_name): files come without one.
        named = bool(message.agent.name or message.agent.picture)
        await self.switchboard.touch(
            handoff.conversation_id,
            agent=True,
            agent_name=message.agent.name if named else None,
            agent_picture=message.agent.picture if named else None,
        )
        await self.record.add(
            handoff.conversation_id,
            RecordEntry(
                "agent",
                message.message,
                handoff.chat_session_id,
                time.time(),
                agent_name=message.agent.name,
            ),
        )

    async def upload(self, upload: AgentUpload) -> None:
        """Store the agent's file and send its link."""
        handoff = await self.switchboard.wait_for_chat(upload.session_id, self.new_chat_grace)
        agent = upload.agent
        if not (agent.name or agent.picture):
            agent = AgentIdentity(handoff.agent_name, handoff.agent_picture)
        stored = await self.files.store(upload.file)
        link = FileLink(
            url=self.files.url_for(stored),
            filename=stored.filename,
            is_image=stored.content_type.startswith("image/"),
        )
        await self._put(handoff, ToCustomer("file", file=link, agent=agent))
        _first_reply(handoff)
        await self.switchboard.touch(handoff.conversation_id, agent=True)
        await self.record.add(
            handoff.conversation_id,
            RecordEntry(
                "agent",
                f"[file: {stored.filename}]",
                handoff.chat_session_id,
                time.time(),
                agent_name=agent.name,
                attachment_url=link.url,
            ),
        )

    async def typing(self, typing: AgentTyping) -> None:
        handoff = await self.switchboard.wait_for_chat(typing.session_id, self.new_chat_grace)
        await self._put(handoff, ToCustomer("typing", typing=typing.typing))

    async def _put(self, handoff: Handoff, item: ToCustomer) -> None:
        await self.outbox.put(
            handoff.conversation_id, handoff.channel, handoff.chat_session_id, item
        )

    async def drain(self, conversation_id: str) -> None:
        """Send what waits for ``conversation_id`` now, if its customer can take it (bounded)."""
        await self.outbox.flush(conversation_id)

    def forget(self, handoff: Handoff) -> None:
        """Drop what was kept for an ended chat."""
        self.outbox.note_ended(handoff)

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until the outbox's drainers are done (tests and shutdown use it)."""
        await self.outbox.wait_idle(timeout)

    async def close(self) -> None:
        """Stop the outbox's poll; drainers under way finish (bounded)."""
        await self.outbox.close()


def _first_reply(handoff: Handoff) -> None:
    """The agent's first message or file of the handoff: how long the customer waited.

    ``handoff`` is as read before this reply touched it. Two first replies landing
    on two instances at once may both count; the histogram tolerates that.
    """
    if not handoff.agent_replied:
        handoff_events.agent_first_reply(
            handoff.conversation_id, handoff.chat_session_id, time.time() - handoff.started_at
        )
