"""Agent events to the customer: messages, files and typing, in arrival order.

A hookpoint call becomes one ``ToCustomer`` value, delivered in the background
on the conversation's ``CustomerLine``, one at a time per conversation, so the
customer sees them in the order the agent sent them and a hookpoint answers at
once. The returned future says whether the customer's channel took it.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Set

from connectors.omnidesk.channel.files import AgentFileStore
from connectors.omnidesk.channel.hookpoints import (
    AgentIdentity,
    AgentMessage,
    AgentTyping,
    AgentUpload,
)
from connectors.omnidesk.channel.record import TurnRecord
from connectors.omnidesk.channel.sides import CustomerLine, FileLink, RecordEntry
from connectors.omnidesk.channel.switchboard import Handoff, Switchboard

logger = logging.getLogger(__name__)

DELIVERY_TIMEOUT = 10.0  # seconds one event may take to reach the customer's channel
SHUTDOWN_GRACE = 5.0  # seconds deliveries under way may finish at shutdown


@dataclass(frozen=True)
class ToCustomer:
    """One thing for the customer: agent text, an agent file, or the agent's typing."""

    kind: str  # "text" | "file" | "typing"
    text: str = ""
    file: Optional[FileLink] = None
    typing: bool = False
    agent: Optional[AgentIdentity] = None

    def describe(self) -> str:
        return {"text": "agent message", "file": "agent file"}.get(self.kind, "agent typing")


async def send_to(line: CustomerLine, conversation_id: str, item: ToCustomer) -> None:
    """Send ``item`` on ``line``; raises whatever the customer's channel raised."""
    if item.kind == "text":
        await line.send_text(conversation_id, item.text, item.agent)
    elif item.kind == "file" and item.file is not None:
        await line.send_file(conversation_id, item.file, item.agent)
    elif not await line.send_typing(conversation_id, item.typing):
        logger.debug("The channel of conversation %s cannot show typing; dropped.", conversation_id)


class AgentDelivery:
    """Delivers agent events to customers, per conversation in arrival order."""

    def __init__(
        self,
        switchboard: Switchboard,
        lines: Mapping[str, CustomerLine],
        files: AgentFileStore,
        record: TurnRecord,
        new_chat_grace: float,
    ) -> None:
        self.switchboard = switchboard
        self.lines = dict(lines)
        self.files = files
        self.record = record
        self.new_chat_grace = new_chat_grace
        self._locks: Dict[str, asyncio.Lock] = {}
        self._tasks: Set[asyncio.Future[bool]] = set()

    async def message(self, message: AgentMessage) -> "asyncio.Future[bool]":
        handoff = await self.switchboard.wait_for_chat(message.session_id, self.new_chat_grace)
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
        return self._start(handoff, ToCustomer("text", text=message.message, agent=message.agent))

    async def upload(self, upload: AgentUpload) -> "asyncio.Future[bool]":
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
        return self._start(handoff, ToCustomer("file", file=link, agent=agent))

    async def typing(self, typing: AgentTyping) -> "asyncio.Future[bool]":
        handoff = await self.switchboard.wait_for_chat(typing.session_id, self.new_chat_grace)
        return self._start(handoff, ToCustomer("typing", typing=typing.typing))

    def _start(self, handoff: Handoff, item: ToCustomer) -> "asyncio.Future[bool]":
        task = asyncio.ensure_future(self._deliver(handoff, item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver(self, handoff: Handoff, item: ToCustomer) -> bool:
        """True once the customer's channel took ``item``; False (logged) when it failed."""
        line = self.lines.get(handoff.channel)
        if line is None:
            logger.error(
                "No wrapped channel named %s for conversation %s (chat %s): %s not delivered. "
                "Add it to customer_channels again or end the chat.",
                handoff.channel,
                handoff.conversation_id,
                handoff.chat_session_id,
                item.describe(),
            )
            return False
        lock = self._locks.setdefault(handoff.conversation_id, asyncio.Lock())
        try:
            async with lock:
                await asyncio.wait_for(
                    send_to(line, handoff.conversation_id, item), timeout=DELIVERY_TIMEOUT
                )
        except Exception as error:
            logger.error(
                "Could not deliver %s to conversation %s (chat %s): %s: %s",
                item.describe(),
                handoff.conversation_id,
                handoff.chat_session_id,
                type(error).__name__,
                error,
            )
            return False
        logger.info(
            "Delivered %s to conversation %s (chat %s).",
            item.describe(),
            handoff.conversation_id,
            handoff.chat_session_id,
        )
        return True

    async def drain(self, conversation_id: str) -> None:
        """Wait until the deliveries under way to ``conversation_id`` are done."""
        lock = self._locks.get(conversation_id)
        if lock is not None:
            async with lock:
                pass

    def forget(self, handoff: Handoff) -> None:
        """Drop what was kept for an ended chat."""
        self._locks.pop(handoff.conversation_id, None)

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until background deliveries are done (tests and shutdown use it)."""
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        """Let deliveries under way finish, for at most SHUTDOWN_GRACE, then cancel the rest."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE)
            for task in pending:
                task.cancel()
