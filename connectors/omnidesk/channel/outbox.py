"""The outbox: everything the connector sends a customer in a handoff, in order, kept until taken.

Agent text, agent files, the agent's typing, the connector's notices and the
end-of-chat message are put in one outbox per conversation before a hookpoint
answers ``ok``. A drainer takes them off one at a time, oldest first, and
removes an entry only once the customer's channel took it: for socket.io, it
is sent by the instance a socket of that session is connected to (``Presence``;
a put nudges every instance through Redis); for the callback channel and any
other, the send must succeed. What the
channel refused stays and is tried again with backoff; what waits longer than
``outbox_retention`` is dropped and logged with its chat id.

One drainer per conversation at a time, across instances: a short lease per
conversation, and an entry is removed only while its drainer still holds the
lease (a fencing check in the same Redis script). With ``memory://`` both the
entries and the lease live in this process; with the Redis switchboard they
live in Redis, so the instance that answers a hookpoint need not be the one
holding the customer's socket. docs/architecture.md ("The outbox") says why a
Stream.

Here: ``Outbox`` (put, the poll, flush, the lifecycle) and ``OutboxLine`` (the
relay's notices through the outbox). What an entry is: to_customer.py; where
entries live: outbox_store.py; taking them off: drainer.py; which instance
holds a socket: presence.py.

Nothing here imports rasa or sanic.
"""

import asyncio
import contextlib
import logging
import time
from typing import Dict, Mapping, Optional, Tuple

from connectors.omnidesk.channel.drainer import SHUTDOWN_GRACE, Drainer
from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.outbox_store import OutboxStore
from connectors.omnidesk.channel.presence import Presence
from connectors.omnidesk.channel.sides import CustomerLine, FileLink
from connectors.omnidesk.channel.switchboard import Handoff, Switchboard, SwitchboardError
from connectors.omnidesk.channel.to_customer import OutboxEntry, ToCustomer, send_to

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.5  # seconds between looks over the conversations with waiting entries
ENDED_MEMORY = 300.0  # seconds the chat id of an ended handoff is kept for late notices


class Outbox:
    """Puts what the customer is sent in order, and drains it when their channel takes it."""

    def __init__(
        self,
        store: OutboxStore,
        lines: Mapping[str, CustomerLine],
        switchboard: Switchboard,
        retention: float,
        backoff_base: float,
        backoff_max: float,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.store = store
        self.lines = dict(lines)
        self.switchboard = switchboard
        self.poll_interval = poll_interval
        self.drainer = Drainer(store, self.lines, retention, backoff_base, backoff_max)
        self._ended: Dict[str, Tuple[str, float]] = {}  # conversation -> (chat, when)
        self._polling: Optional[asyncio.Task[None]] = None
        self._poll_failing = False
        self._presence: Optional[Presence] = None
        self._listening: Optional[asyncio.Task[None]] = None

    # -- putting -----------------------------------------------------------------

    async def put(
        self, conversation_id: str, channel: str, chat_session_id: str, item: ToCustomer
    ) -> None:
        """Store ``item`` for the customer, then start draining; SwitchboardError if not stored."""
        entry = OutboxEntry(conversation_id, channel, chat_session_id, time.time(), item)
        await self.store.put(conversation_id, entry.to_json())
        logger.debug(
            "Outbox of conversation %s (chat %s): %s stored.",
            conversation_id,
            chat_session_id,
            item.describe(),
        )
        self.kick(conversation_id)

    def lines_for_relay(self) -> Dict[str, CustomerLine]:
        """Lines that put into this outbox, for the relay's notices."""
        return {name: OutboxLine(self, name) for name in self.lines}

    async def chat_of(self, conversation_id: str) -> str:
        """The chat id of the conversation's handoff, or of the one that just ended."""
        try:
            handoff = await self.switchboard.get(conversation_id)
        except SwitchboardError:
            handoff = None
        if handoff is not None:
            return handoff.chat_session_id
        ended = self._ended.get(conversation_id)
        return ended[0] if ended is not None else "unknown"

    def note_ended(self, handoff: Handoff) -> None:
        """Remember an ended chat's id a while: its end-of-chat notice is put after the end."""
        now = time.monotonic()
        self._ended[handoff.conversation_id] = (handoff.chat_session_id, now)
        for conversation_id, (_, when) in list(self._ended.items()):
            if now - when > ENDED_MEMORY:
                del self._ended[conversation_id]

    # -- draining ----------------------------------------------------------------

    def kick(self, conversation_id: str) -> None:
        """Drain the conversation's outbox now (a drainer under way goes round once more)."""
        self.drainer.kick(conversation_id)

    # -- the poll: retries, other instances' leftovers, expiry -------------------------

    def start(self, presence: Optional[Presence] = None) -> None:
        """Poll for waiting messages, and hear other instances' puts for sockets held here."""
        self._presence = presence
        self.drainer.presence = presence
        self._polling = asyncio.ensure_future(self._poll())
        self._listening = asyncio.ensure_future(self.store.listen(self._on_nudge))

    def _on_nudge(self, conversation_id: str) -> None:
        presence = self._presence
        if presence is not None and presence.here(conversation_id):
            self.kick(conversation_id)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                waiting = await self.store.waiting()
            except SwitchboardError as error:
                if not self._poll_failing:
                    logger.error("Outbox poll failed (logged once until it works again): %s", error)
                self._poll_failing = True
                continue
            if self._poll_failing:
                logger.info("Outbox poll works again.")
                self._poll_failing = False
            now = time.monotonic()
            for conversation_id in waiting:
                if self.drainer.due(conversation_id, now):
                    self.drainer.start(conversation_id)

    async def flush(self, conversation_id: str, timeout: float = SHUTDOWN_GRACE) -> None:
        """Send what waits for the conversation now, and wait (bounded) until it is sent.

        The chat's end comes after the agent's last messages: this waits for the
        drainer here and, when the customer's socket is on another instance, for
        that instance to empty the outbox. It returns early when what is left
        cannot be sent now (the customer is away, the backend refuses).
        """
        self.kick(conversation_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.drainer.running(conversation_id)
            if task is not None and not task.done():
                await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
                continue
            presence = self._presence
            if presence is None or presence.here(conversation_id):
                return
            try:
                if not await self.store.head(conversation_id, 1):
                    return
                if not await presence.present(conversation_id):
                    return
            except SwitchboardError:
                return
            await asyncio.sleep(0.05)

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until the drainers under way are done (tests and shutdown use it)."""
        await self.drainer.wait_idle(timeout)

    async def close(self) -> None:
        """Stop polling; let drainers under way finish (bounded), then cancel the rest."""
        for task in (self._polling, self._listening):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._polling = self._listening = None
        await self.drainer.close()


class OutboxLine:
    """A ``CustomerLine`` that puts into the outbox: the relay's notices go in order too."""

    def __init__(self, outbox: Outbox, channel: str) -> None:
        self._outbox = outbox
        self._channel = channel

    async def _put(self, recipient_id: str, item: ToCustomer) -> None:
        chat = await self._outbox.chat_of(recipient_id)
        try:
            await self._outbox.put(recipient_id, self._channel, chat, item)
        except SwitchboardError as error:
            # Redis is down, and a notice is mostly about that ("we have trouble
            # reaching..."): it goes straight to the customer's channel rather
            # than not at all. Only agent events must wait in the outbox.
            line = self._outbox.lines.get(self._channel)
            if line is None:
                raise
            logger.warning(
                "Outbox unreachable (%s): a notice to conversation %s goes to its channel directly.",
                error,
                recipient_id,
            )
            await send_to(line, recipient_id, item)

    async def send_text(
        self, recipient_id: str, text: str, agent: Optional[AgentIdentity] = None
    ) -> None:
        await self._put(recipient_id, ToCustomer("text", text=text, agent=agent))

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None:
        await self._put(recipient_id, ToCustomer("file", file=file, agent=agent))

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        await self._put(recipient_id, ToCustomer("typing", typing=typing))
        return True

    async def send_details(self, recipient_id: str, details: Mapping[str, str]) -> bool:
        await self._put(recipient_id, ToCustomer("details", details=dict(details)))
        return True

    async def send_notice(self, recipient_id: str, text: str, kind: str) -> None:
        """A connector notice (``kind`` "notice", or "end" for the end of the chat)."""
        await self._put(recipient_id, ToCustomer("text", text=text, notice=kind))

    async def reachable(self, recipient_id: str) -> bool:
        return True
