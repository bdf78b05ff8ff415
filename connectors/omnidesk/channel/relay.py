"""Relay mode: where a customer turn goes, and how agent events reach the customer.

The channel only routes; the decisions live here, in plain classes that know
neither Sanic nor Rasa. Two small protocols stand for the Rasa side:
``CustomerLine`` (how to reach a customer on one wrapped channel) and
``BotSide`` (the tracker record, the bot's responses and handing the
conversation back). channel.py implements them with Rasa's objects.

Ordering: customer turns of one chat take their messageNumber and are sent
under one asyncio lock, so Omnidesk sees them in order; agent events of one
conversation are delivered to the customer in the order they arrived, in
background tasks, so a hookpoint answers at once.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Dict, List, Mapping, Optional, Protocol, Sequence, Set

from connectors.omnidesk import rules
from connectors.omnidesk.channel.files import AgentFileStore
from connectors.omnidesk.channel.hookpoints import (
    AgentIdentity,
    AgentMessage,
    AgentTyping,
    AgentUpload,
    EndSession,
    UploadedFile,
)
from connectors.omnidesk.channel.switchboard import Handoff, Switchboard, new_handoff
from connectors.omnidesk.client import OmnideskClient, OmnideskError
from connectors.omnidesk.handoff import HandoffOutcome, HandoffStarted
from connectors.omnidesk.settings import OmnideskSettings

logger = logging.getLogger(__name__)

DELIVERY_TIMEOUT = 10.0
# How long a hookpoint call for a chat the switchboard does not know yet waits
# for the action's control payload to register it, and how often it looks.
NEW_CHAT_GRACE = 0.3
NEW_CHAT_POLL = 0.02
SHUTDOWN_GRACE = 5.0

# The connector's own messages: responses of the bot's domain when it has them.
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
}


class NotInRelay(LookupError):
    """The conversation or Omnidesk chat is not with an agent now."""


class CustomerLine(Protocol):
    """How to reach a customer on one wrapped channel, outside a request."""

    async def send_text(
        self, recipient_id: str, text: str, agent: Optional[AgentIdentity] = None
    ) -> None: ...

    async def send_file(
        self,
        recipient_id: str,
        url: str,
        filename: str,
        is_image: bool,
        agent: Optional[AgentIdentity] = None,
    ) -> None: ...

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        """Show or hide the agent's typing; False when the channel cannot show it."""
        ...


@dataclass(frozen=True)
class RecordEntry:
    """One relayed turn for the tracker: who said it, in which chat."""

    role: str  # "customer" | "agent"
    text: str
    chat_session_id: str
    timestamp: float
    agent_name: Optional[str] = None
    attachment_url: Optional[str] = None


class BotSide(Protocol):
    """Rasa, as the relay sees it."""

    def response_text(self, name: str) -> Optional[str]:
        """The first text variation of a response in the bot's domain, if any."""
        ...

    async def record(self, conversation_id: str, entries: Sequence[RecordEntry]) -> None:
        """Append relayed turns to the conversation's tracker."""
        ...

    async def hand_back(
        self, handoff: Handoff, outcome: HandoffOutcome, line: Optional[CustomerLine]
    ) -> None:
        """Give the conversation back to the bot and let it tell the customer."""
        ...


@dataclass
class _Buffer:
    entries: List[RecordEntry] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)  # when its oldest entry came


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
    ) -> None:
        self.settings = settings
        self.record_interval = settings.record_interval
        self.new_chat_grace = NEW_CHAT_GRACE
        self.switchboard = switchboard
        self.client = client
        self.lines = dict(lines)
        self.bot = bot
        self.files = files
        self._chat_locks: Dict[str, asyncio.Lock] = {}
        self._delivery_locks: Dict[str, asyncio.Lock] = {}
        self._buffers: Dict[str, _Buffer] = {}
        self._tasks: Set[asyncio.Task[Any]] = set()
        # The agent of each chat's latest message: uploadForCustomer carries no
        # name or picture (omnidesk-api.txt), so a file is shown as theirs.
        self._agents: Dict[str, AgentIdentity] = {}

    # -- texts -----------------------------------------------------------------

    def text(self, name: str) -> str:
        from_domain = self.bot.response_text(name)
        if from_domain:
            return from_domain
        return DEFAULT_TEXTS[name].replace("{leave_command}", self.settings.leave_command)

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

    def _chat_lock(self, chat_session_id: str) -> asyncio.Lock:
        lock = self._chat_locks.get(chat_session_id)
        if lock is None:
            lock = self._chat_locks[chat_session_id] = asyncio.Lock()
        return lock

    def is_leave_command(self, text: Optional[str]) -> bool:
        return text is not None and text.strip() == self.settings.leave_command

    async def customer_turn(
        self, handoff: Handoff, text: Optional[str], line: CustomerLine
    ) -> bool:
        """Relay one customer turn to the agent; False (customer told) when it failed."""
        if self.is_leave_command(text):
            logger.info(
                "Customer of conversation %s left chat %s.",
                handoff.conversation_id,
                handoff.chat_session_id,
            )
            await self.end_chat(handoff, HandoffOutcome.ENDED_BY_CUSTOMER)
            return True
        if text is None or not text.strip():
            logger.debug(
                "Empty customer turn in conversation %s not relayed.", handoff.conversation_id
            )
            return True
        async with self._chat_lock(handoff.chat_session_id):
            number = await self.switchboard.take_message_number(handoff.conversation_id)
            if number is None:
                # Ended while this turn waited for the lock: the bot has it now.
                raise NotInRelay(handoff.conversation_id)
            # Omnidesk caps messageNumber at 50 and calls it optional: past the cap
            # the message goes without it rather than being refused.
            sent_number: Optional[int] = number if number <= rules.MESSAGE_NUMBER_MAX else None
            try:
                await self.client.notify_user_new_chat_message(
                    chat_session_id=handoff.chat_session_id,
                    message=text,
                    message_number=sent_number,
                )
            except OmnideskError as error:
                self._log_failure("customer message", handoff, error)
                await self._tell(
                    line, handoff.conversation_id, self.text("utter_omnidesk_delivery_failed")
                )
                return False
        await self.switchboard.touch(handoff.conversation_id)
        self._buffer(handoff.conversation_id).entries.append(
            RecordEntry("customer", text, handoff.chat_session_id, time.time())
        )
        logger.info(
            "Customer message %s relayed: conversation %s, chat %s.",
            sent_number if sent_number is not None else "(unnumbered)",
            handoff.conversation_id,
            handoff.chat_session_id,
        )
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
            self._log_failure("customer file", handoff, error)
            line = self.lines.get(handoff.channel)
            if line is not None:
                await self._tell(line, conversation_id, self.text("utter_omnidesk_delivery_failed"))
            raise
        await self.switchboard.touch(conversation_id)
        self._buffer(conversation_id).entries.append(
            RecordEntry(
                "customer", f"[file: {upload.filename}]", handoff.chat_session_id, time.time()
            )
        )
        logger.info(
            "Customer file relayed: conversation %s, chat %s, %d bytes.",
            conversation_id,
            handoff.chat_session_id,
            len(upload.content),
        )

    async def customer_event(self, conversation_id: str, event: str) -> None:
        """Relay a typing or widget event; NotInRelay or OmnideskError on failure."""
        rules.check_event(event)
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

    # -- agent to customer -----------------------------------------------------

    async def _handoff_for(self, session_id: str) -> Handoff:
        """The open handoff of chat ``session_id``, looked for again for a moment.

        The action opens the Omnidesk chat and the channel registers it a few
        milliseconds later, when the action's control payload comes back through
        the turn. Omnidesk may call a hookpoint in between (an automatic greeting,
        a quick agent), so an unknown chat is not refused at once.
        """
        deadline = time.monotonic() + self.new_chat_grace
        while True:
            handoff = await self.switchboard.find_by_chat_session(session_id)
            if handoff is not None:
                return handoff
            if time.monotonic() >= deadline:
                raise NotInRelay(session_id)
            await asyncio.sleep(NEW_CHAT_POLL)

    async def agent_message(self, message: AgentMessage) -> "asyncio.Future[bool]":
        """Queue the agent's message for the customer; the future says whether it arrived."""
        handoff = await self._handoff_for(message.session_id)
        if message.agent.name or message.agent.picture:
            self._agents[handoff.chat_session_id] = message.agent
        await self.switchboard.touch(handoff.conversation_id, agent=True)
        self._buffer(handoff.conversation_id).entries.append(
            RecordEntry(
                "agent",
                message.message,
                handoff.chat_session_id,
                time.time(),
                agent_name=message.agent.name,
            )
        )

        async def deliver(line: CustomerLine) -> None:
            await line.send_text(handoff.conversation_id, message.message, message.agent)

        return self._deliver(handoff, "agent message", deliver)

    async def agent_upload(self, upload: AgentUpload) -> "asyncio.Future[bool]":
        """Store the agent's file and send its link; the future says whether it arrived."""
        handoff = await self._handoff_for(upload.session_id)
        agent = upload.agent
        if not (agent.name or agent.picture):
            agent = self._agents.get(handoff.chat_session_id, agent)
        stored = await self.files.store(upload.file)
        url = self.files.url_for(stored)
        await self.switchboard.touch(handoff.conversation_id, agent=True)
        self._buffer(handoff.conversation_id).entries.append(
            RecordEntry(
                "agent",
                f"[file: {stored.filename}]",
                handoff.chat_session_id,
                time.time(),
                agent_name=agent.name,
                attachment_url=url,
            )
        )

        async def deliver(line: CustomerLine) -> None:
            await line.send_file(
                handoff.conversation_id,
                url,
                stored.filename,
                stored.content_type.startswith("image/"),
                agent,
            )

        return self._deliver(handoff, "agent file", deliver)

    async def agent_typing(self, typing: AgentTyping) -> "asyncio.Future[bool]":
        handoff = await self._handoff_for(typing.session_id)

        async def deliver(line: CustomerLine) -> None:
            shown = await line.send_typing(handoff.conversation_id, typing.typing)
            if not shown:
                logger.debug("Channel %s cannot show typing; dropped.", handoff.channel)

        return self._deliver(handoff, "agent typing", deliver)

    async def agent_end(self, end: EndSession) -> None:
        handoff = await self._handoff_for(end.session_id)
        self._spawn(
            self.end_chat(handoff, HandoffOutcome.ENDED_BY_AGENT),
            what="end of chat",
            handoff=handoff,
        )

    def _deliver(self, handoff: Handoff, what: str, deliver: Any) -> "asyncio.Future[bool]":
        """Deliver in the background, in arrival order per conversation.

        The returned future resolves to True once the customer's channel took
        it, False when delivery failed (logged with its cause). The hookpoint
        waits for it briefly, so a failure Omnidesk can still hear of is
        answered as one, not as ``ok``.
        """
        line = self.lines.get(handoff.channel)
        if line is None:
            logger.error(
                "No wrapped channel named %s for conversation %s (chat %s): %s not delivered. "
                "Add it to customer_channels again or end the chat.",
                handoff.channel,
                handoff.conversation_id,
                handoff.chat_session_id,
                what,
            )
            failed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            failed.set_result(False)
            return failed
        lock = self._delivery_locks.setdefault(handoff.conversation_id, asyncio.Lock())

        async def run() -> None:
            async with lock:
                await asyncio.wait_for(deliver(line), timeout=DELIVERY_TIMEOUT)
            logger.info(
                "Delivered %s to conversation %s (chat %s).",
                what,
                handoff.conversation_id,
                handoff.chat_session_id,
            )

        return self._spawn(run(), what=what, handoff=handoff)

    def _spawn(
        self, coroutine: Awaitable[Any], what: str, handoff: Handoff
    ) -> "asyncio.Future[bool]":
        async def guarded() -> bool:
            try:
                await coroutine
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.error(
                    "Could not deliver %s to conversation %s (chat %s): %s: %s",
                    what,
                    handoff.conversation_id,
                    handoff.chat_session_id,
                    type(error).__name__,
                    error,
                )
                return False
            return True

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the end of a chat -----------------------------------------------------

    async def end_chat(self, handoff: Handoff, outcome: HandoffOutcome) -> bool:
        """End relay mode once; False when someone else already ended it."""
        ended = await self.switchboard.end(handoff.conversation_id, handoff.chat_session_id)
        if ended is None:
            return False
        if outcome is not HandoffOutcome.ENDED_BY_AGENT:
            try:
                await self.client.notify_user_end_chat(chat_session_id=ended.chat_session_id)
            except OmnideskError as error:
                # The chat is over for the customer either way; the agent's desk
                # may show it open until Omnidesk closes it.
                self._log_failure("end of chat", ended, error)
        # Wait for deliveries already under way, so the end comes after them.
        lock = self._delivery_locks.get(ended.conversation_id)
        if lock is not None:
            async with lock:
                pass
        await self.flush(ended.conversation_id)
        self._chat_locks.pop(ended.chat_session_id, None)
        self._agents.pop(ended.chat_session_id, None)
        self._delivery_locks.pop(ended.conversation_id, None)
        logger.info(
            "Handoff ended (%s): conversation %s, chat %s.",
            outcome.value,
            ended.conversation_id,
            ended.chat_session_id,
        )
        await self.bot.hand_back(ended, outcome, self.lines.get(ended.channel))
        return True

    # -- the record ------------------------------------------------------------

    def _buffer(self, conversation_id: str) -> _Buffer:
        buffer = self._buffers.get(conversation_id)
        if buffer is None:
            buffer = self._buffers[conversation_id] = _Buffer()
        return buffer

    async def flush(self, conversation_id: str) -> None:
        buffer = self._buffers.pop(conversation_id, None)
        if buffer is None or not buffer.entries:
            return
        try:
            await self.bot.record(conversation_id, buffer.entries)
        except Exception as error:
            # Keep what was not written, in order, for the next flush.
            self._buffer(conversation_id).entries[:0] = buffer.entries
            logger.error(
                "Could not write %d relayed turns to the tracker of conversation %s: %s: %s",
                len(buffer.entries),
                conversation_id,
                type(error).__name__,
                error,
            )
            raise

    async def flush_all(self, older_than: Optional[float] = None) -> None:
        """Write buffered turns; with ``older_than``, only buffers that waited that long.

        A tracker write reads and rewrites the whole tracker (InMemoryTrackerStore
        does, and it runs on the event loop), so writes are paced: each
        conversation at most once per ``settings.record_interval`` and at the end of its
        chat, one conversation at a time with the loop let go in between, so
        customer turns are served among them rather than after all of them.
        """
        cutoff = None if older_than is None else time.monotonic() - older_than
        for conversation_id in list(self._buffers):
            buffer = self._buffers.get(conversation_id)
            if buffer is None or (cutoff is not None and buffer.since > cutoff):
                continue
            try:
                await self.flush(conversation_id)
            except Exception:  # noqa: S112 - logged in flush; the others still get written
                continue
            await asyncio.sleep(0)

    # -- the sweeper -----------------------------------------------------------

    async def sweep(self, now: Optional[float] = None) -> None:
        """End idle chats and send the one-time wait notice."""
        at = time.time() if now is None else now
        for handoff in await self.switchboard.all():
            if at - handoff.last_activity >= self.settings.inactivity_timeout:
                logger.info(
                    "Chat %s of conversation %s idle for %.0f s: ending it.",
                    handoff.chat_session_id,
                    handoff.conversation_id,
                    at - handoff.last_activity,
                )
                await self.end_chat(handoff, HandoffOutcome.TIMED_OUT)
                continue
            wait = self.settings.agent_wait_notice
            if (
                wait
                and wait > 0
                and not handoff.agent_replied
                and at - handoff.started_at >= wait
                and await self.switchboard.claim_wait_notice(handoff.conversation_id)
            ):
                line = self.lines.get(handoff.channel)
                if line is not None:
                    await self._tell(
                        line, handoff.conversation_id, self.text("utter_omnidesk_agent_wait")
                    )
                logger.info(
                    "No agent reply yet in chat %s of conversation %s: customer told.",
                    handoff.chat_session_id,
                    handoff.conversation_id,
                )
        await self.flush_all(older_than=self.record_interval)

    async def run_sweeper(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.error("Sweep of open chats failed: %s: %s", type(error).__name__, error)

    async def close(self) -> None:
        """Let deliveries under way finish (bounded), then write what is buffered."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE)
            for task in pending:
                task.cancel()
        await self.flush_all()

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until background deliveries are done (tests and shutdown use it)."""
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))

    # -- helpers ---------------------------------------------------------------

    async def _tell(self, line: CustomerLine, conversation_id: str, text: str) -> None:
        try:
            await asyncio.wait_for(line.send_text(conversation_id, text), timeout=DELIVERY_TIMEOUT)
        except Exception as error:
            logger.error(
                "Could not tell the customer of conversation %s: %s: %s",
                conversation_id,
                type(error).__name__,
                error,
            )

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
