"""Relay mode: a handoff's whole life, from its start to the customer handed back.

The ``Relay`` is the one door the channel's Rasa and HTTP sides use (input.py,
routes.py, sweeper.py): it starts a handoff, decides whether a customer turn
goes to the agent, takes the customer's files and typing to Omnidesk, puts the
agent's messages, files and typing in the customer's outbox, and ends a chat
once, whoever ends it. Nothing outside reaches its parts. It knows neither
Sanic nor Rasa: it sees the customer through the outbox's lines and Rasa
through ``BotSide`` (sides.py), so its logic is tested without a server
(tests/relay/).

Its parts, each a real unit: ``CustomerTurns`` (turns.py: the turn lease,
messageNumber order, a switchboard outage), ``Notices`` (notices.py),
``TurnRecord`` (record.py: relayed turns on their way to the tracker) and the
``Outbox`` (outbox.py). docs/channel.md states the delivery guarantee.
"""

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, List, Mapping, Optional, Set, Tuple
from urllib.parse import urlencode

from connectors.omnidesk import handoff_events, metrics
from connectors.omnidesk.channel.files import AgentFileStore, StoredFile
from connectors.omnidesk.channel.hookpoints import (
    AgentIdentity,
    AgentMessage,
    AgentTyping,
    AgentUpload,
    EndSession,
    UploadedFile,
)
from connectors.omnidesk.channel.notices import (
    AGENT_WAIT,
    CHAT_ENDED,
    DELAYED,
    DELIVERY_FAILED,
    HANDOFF_FAILED,
    TURN_NOT_HANDLED,
    Notices,
)
from connectors.omnidesk.channel.outbox import Outbox, OutboxEntry, Pulled, ToCustomer
from connectors.omnidesk.channel.record import TurnRecord, to_json
from connectors.omnidesk.channel.sides import BotSide, FileLink, RecordEntry
from connectors.omnidesk.channel.switchboard import (
    NEW_CHAT_POLL,
    Accepted,
    Handoff,
    LocalLine,
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

__all__ = ["Reader", "Relay"]


@dataclass(frozen=True)
class Reader:
    """A customer who pulls, as a poll or stream proved it: whose outbox, which chat's entries.

    ``open`` is False once that chat has ended: its last entries can still be read.
    """

    conversation_id: str
    chat_session_id: str
    open: bool


class NotPulled(LookupError):
    """The conversation's channel delivers its messages itself; only rest is pulled from."""


# A turn kept through a switchboard outage is tried again this often.
OUTAGE_RETRY_INTERVAL = 1.0
# An end Omnidesk has not heard of is told again by the sweeper for this long.
ENDING_KEPT = 86400.0


class Relay:
    """Relay mode's logic, one per OmnideskInput. It owns and closes what it is given."""

    def __init__(
        self,
        settings: OmnideskSettings,
        switchboard: Switchboard,
        client: OmnideskClient,
        outbox: Outbox,
        bot: BotSide,
        files: AgentFileStore,
        routes_url: str,
    ) -> None:
        self._settings = settings
        self._switchboard = switchboard
        self._client = client
        self._outbox = outbox
        self._bot = bot
        self._files = files
        self._routes_url = routes_url.rstrip("/")
        self._notices = Notices(bot, settings.leave_command, outbox)
        self._record = TurnRecord(bot, settings.record_interval, switchboard.records)
        self._turns = CustomerTurns(settings, client, self._notices, self._record)
        # Every customer turn of a conversation stands in this line on arrival.
        self._line = LocalLine()
        # Turns and ends run in tasks of the relay's own: a client that goes away
        # does not cut a relay in half.
        self._tasks: Set[asyncio.Future[Any]] = set()
        self._ends: Set[asyncio.Future[None]] = set()
        # What the customer's channel refused for good, the agent hears of.
        outbox.on_undeliverable = self._tell_agent_undelivered

    # -- the start of a handoff ----------------------------------------------------

    async def start(
        self,
        conversation_id: str,
        channel: str,
        started: HandoffStarted,
        route: Optional[Mapping[str, str]] = None,
    ) -> bool:
        """Put the conversation with the agent of the chat the action opened.

        ``route``: where the customer's channel replies in this conversation,
        when it needs more than the conversation id (lines/ reads it from the
        customer's turn); kept with the handoff.

        False when the switchboard could not take it: the chat is then ended
        (left open, it would wait on the agent's desk for a customer whose
        turns go to the bot) and the customer told.
        """
        handoff = new_handoff(
            conversation_id=conversation_id,
            chat_session_id=started.chat_session_id,
            channel=channel,
            next_message_number=started.next_message_number,
            route=route,
        )
        try:
            replaced = await self._switchboard.start(handoff)
        except SwitchboardError as error:
            await self._not_registered(handoff, error)
            return False
        self._turns.seen(conversation_id, handoff)
        if replaced is not None and replaced.ending is not None:
            # Its end was ours and Omnidesk had not heard of it yet: tell it now.
            self._in_background(self._tell_omnidesk_end(replaced))
        elif replaced is not None and replaced.chat_session_id != handoff.chat_session_id:
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
        await self._hand_customer_token(handoff)
        return True

    async def _hand_customer_token(self, handoff: Handoff) -> None:
        """Give the customer's channel the token its calls to /upload and /event carry.

        It goes through the outbox like an agent message, so a socket that drops
        or a callback backend that is briefly down still gets it. A failure to
        store it is logged: the chat goes on, only the customer's files and
        typing cannot reach the agent.
        """
        details = {
            "customer_token": self._settings.customer_token(handoff.chat_session_id),
            "upload_url": f"{self._routes_url}/upload",
            "event_url": f"{self._routes_url}/event",
        }
        if self._outbox.pulls(handoff.channel):
            # rest: where its client fetches what the agent sends (docs/channel.md).
            details["messages_url"] = f"{self._routes_url}/messages"
            details["stream_url"] = f"{self._routes_url}/stream"
        try:
            await self._put(handoff, ToCustomer("details", details=details))
        except SwitchboardError as error:
            logger.warning(
                "Could not hand conversation %s its customer token: %s",
                handoff.conversation_id,
                error,
            )

    async def _not_registered(self, handoff: Handoff, error: Exception) -> None:
        logger.error(
            "Handoff of conversation %s to chat %s could not be registered (%s); "
            "ending the chat and telling the customer.",
            handoff.conversation_id,
            handoff.chat_session_id,
            error,
        )
        handoff_events.ended(handoff.conversation_id, handoff.chat_session_id, "failed", error)
        try:
            await self._client.notify_user_end_chat(chat_session_id=handoff.chat_session_id)
        except OmnideskError as end_error:
            logger.error(
                "Could not end orphan chat %s of conversation %s: %s",
                handoff.chat_session_id,
                handoff.conversation_id,
                end_error,
            )
        await self._notices.tell(handoff, HANDOFF_FAILED)

    # -- the customer's side ---------------------------------------------------------

    def is_leave_command(self, text: Optional[str]) -> bool:
        return text is not None and text.strip() == self._settings.leave_command

    async def turn(
        self,
        conversation_id: str,
        text: Optional[str],
        to_bot: Callable[[], Awaitable[Any]],
        tell_here: Callable[[str], Awaitable[Any]],
    ) -> Any:
        """Serve one customer turn in the order it arrived: to the agent, or ``to_bot``.

        The turn takes its place in its conversation's line at once and is
        served after the turns before it, on every instance: bot turns, relayed
        turns and the leave command alike. Served, it goes to the agent when
        the conversation is with one (the leave command ends the chat; an empty
        turn is dropped), else to the bot (``to_bot``, whose answer is returned).
        A turn that waited ``turn_wait`` for the turns before it is not handled,
        and the customer is told (``tell_here``, the turn's own channel, when the
        conversation is not with an agent).

        It runs in a task of the relay's: a caller that is cancelled (its HTTP
        client went away) leaves the turn to finish. With the switchboard
        unreachable, a conversation this process last saw with an agent keeps
        its turn: the customer is told of a delay and the turn is tried again
        for ``outage_hold`` seconds; any other turn goes to the bot
        (docs/troubleshooting.md, "Redis is down", says what that risks).
        """
        task = asyncio.ensure_future(self._turn(conversation_id, text, to_bot, tell_here))
        self._tasks.add(task)
        task.add_done_callback(self._turn_done)
        return await asyncio.shield(task)

    def _turn_done(self, task: "asyncio.Future[Any]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            logger.error(
                "A customer turn failed: %s: %s",
                type(error).__name__,
                error,
                exc_info=(type(error), error, error.__traceback__) if error else None,
            )

    async def _turn(
        self,
        conversation_id: str,
        text: Optional[str],
        to_bot: Callable[[], Awaitable[Any]],
        tell_here: Callable[[str], Awaitable[Any]],
    ) -> Any:
        wait = self._settings.turn_wait
        deadline = time.monotonic() + wait
        async with self._line.place(conversation_id, wait) as first:
            if not first:
                return await self._not_served(conversation_id, tell_here)
            try:
                return await self._in_line(conversation_id, text, deadline, to_bot, tell_here)
            except SwitchboardError as error:
                return await self._in_outage(
                    conversation_id, text, deadline, to_bot, tell_here, error
                )

    async def _in_line(
        self,
        conversation_id: str,
        text: Optional[str],
        deadline: float,
        to_bot: Callable[[], Awaitable[Any]],
        tell_here: Callable[[str], Awaitable[Any]],
    ) -> Any:
        """The turn, first here: its place across instances, then the agent or the bot."""
        relayed = text is not None and bool(text.strip()) and not self.is_leave_command(text)
        wait = max(0.0, deadline - time.monotonic())
        async with self._switchboard.in_line(conversation_id, relayed, wait) as place:
            if not place.first:
                return await self._not_served(conversation_id, tell_here)
            handoff = place.handoff
            self._turns.seen(conversation_id, handoff)
            if handoff is None:
                return await to_bot()
            if relayed:
                assert text is not None
                await self._turns.send(place, text)
            elif self.is_leave_command(text):
                logger.info(
                    "Customer of conversation %s left chat %s.",
                    conversation_id,
                    handoff.chat_session_id,
                )
                await self._end_in_line(handoff, HandoffOutcome.ENDED_BY_CUSTOMER)
            else:
                logger.debug("Empty customer turn in conversation %s not relayed.", conversation_id)
            return None

    async def _in_outage(
        self,
        conversation_id: str,
        text: Optional[str],
        deadline: float,
        to_bot: Callable[[], Awaitable[Any]],
        tell_here: Callable[[str], Awaitable[Any]],
        error: SwitchboardError,
    ) -> Any:
        """A turn that met an unreachable switchboard; it keeps its place here while it waits."""
        self._turns.log_outage(error)
        handoff = self._turns.last_seen(conversation_id)
        if handoff is None:
            return await to_bot()  # assumed with the bot
        await self._notices.tell(handoff, DELAYED)
        hold = time.monotonic() + self._settings.outage_hold
        while time.monotonic() < hold:
            await asyncio.sleep(min(OUTAGE_RETRY_INTERVAL, max(0.0, hold - time.monotonic())))
            try:
                answer = await self._in_line(
                    conversation_id, text, max(deadline, time.monotonic() + 1.0), to_bot, tell_here
                )
            except SwitchboardError as again:
                self._turns.log_outage(again)
                continue
            logger.info(
                "Switchboard back: the turn of conversation %s kept during the outage went on.",
                conversation_id,
            )
            return answer
        logger.error(
            "Switchboard unreachable for %.0f s: a turn of conversation %s was not relayed; "
            "the customer was told.",
            self._settings.outage_hold,
            conversation_id,
        )
        await self._notices.tell(handoff, DELIVERY_FAILED)
        return None

    async def _not_served(
        self, conversation_id: str, tell_here: Callable[[str], Awaitable[Any]]
    ) -> None:
        """A turn that waited ``turn_wait`` for the turns before it: not handled, the customer told."""
        logger.error(
            "A turn of conversation %s waited %.0f s for the turns before it; it is not "
            "handled, and the customer was told to send it again.",
            conversation_id,
            self._settings.turn_wait,
        )
        handoff_events.failure(
            "customer turn", conversation_id, None, reason="waited past turn_wait"
        )
        handoff = self._turns.last_seen(conversation_id)
        if handoff is not None:
            await self._notices.tell(handoff, TURN_NOT_HANDLED)
            return
        try:
            await tell_here(self._notices.text(TURN_NOT_HANDLED))
        except Exception as error:
            logger.error(
                "Could not tell the customer of conversation %s their turn was not handled: %s: %s",
                conversation_id,
                type(error).__name__,
                error,
            )

    async def handoff_of(self, conversation_id: str) -> Optional[Handoff]:
        """The conversation's open handoff, or None when it is with the bot."""
        return await self._switchboard.get(conversation_id)

    async def with_agent(self, conversation_id: str) -> Handoff:
        """The conversation's open handoff; NotInRelay (404) when it is with the bot."""
        handoff = await self._switchboard.get(conversation_id)
        if handoff is None:
            raise NotInRelay(conversation_id)
        return handoff

    async def check_customer(self, conversation_id: str, token: Optional[str]) -> Handoff:
        """The handoff whose customer token ``token`` is; NotInRelay (404) otherwise.

        A wrong token answers exactly as a conversation not with an agent, so the
        customer routes tell a guesser nothing about who is chatting.
        """
        handoff = await self.with_agent(conversation_id)
        expected = self._settings.customer_token(handoff.chat_session_id)
        if not token or not hmac.compare_digest(
            token.encode("utf-8", "replace"), expected.encode("ascii")
        ):
            logger.warning(
                "Customer route call for conversation %s without its customer token refused (404).",
                conversation_id,
            )
            raise NotInRelay(conversation_id)
        return handoff

    async def customer_file(self, handoff: Handoff, upload: UploadedFile) -> None:
        """Send a customer's file to the agent; OmnideskError (the customer told) on failure."""
        try:
            await self._client.add_attachment(
                chat_session_id=handoff.chat_session_id,
                filename=upload.filename,
                content=upload.content,
                content_type=upload.content_type,
            )
        except OmnideskError as error:
            log_refused("customer file", handoff, error)
            await self._notices.tell(handoff, DELIVERY_FAILED)
            raise
        await self._switchboard.touch(handoff.conversation_id)
        await self._record.add(
            handoff.conversation_id,
            RecordEntry(
                "customer", f"[file: {upload.filename}]", handoff.chat_session_id, time.time()
            ),
        )
        logger.info(
            "Customer file relayed: conversation %s, chat %s, %d bytes.",
            handoff.conversation_id,
            handoff.chat_session_id,
            len(upload.content),
        )

    async def customer_event(self, handoff: Handoff, event: str) -> None:
        """Relay a typing or widget event; OmnideskError on failure."""
        try:
            await self._client.notify_user_new_chat_event(
                chat_session_id=handoff.chat_session_id, event=event
            )
        except OmnideskError as error:
            log_refused(f"customer event {event}", handoff, error)
            raise
        logger.debug(
            "Customer event %s relayed: conversation %s, chat %s.",
            event,
            handoff.conversation_id,
            handoff.chat_session_id,
        )

    # -- the customer pulls (rest): long polls and streams -----------------------------

    async def reader(self, conversation_id: str, token: Optional[str]) -> Reader:
        """Whose entries a customer token reads; NotInRelay (404) as ``check_customer``.

        The open handoff's chat, or an ended chat whose last entries still wait
        (the end of the chat, the bot's words): its client fetches those with
        the token it had. The tokens are derived, so any instance checks them.
        A chat whose handoff is gone but whose ``ended`` entry is not yet put is
        still ending, and reads as open: a poll then waits for the end instead
        of answering that everything was had.
        """
        handoff = await self._switchboard.get(conversation_id)
        if handoff is not None and self._is_customer_token(token, handoff.chat_session_id):
            if not self._outbox.pulls(handoff.channel):
                raise NotPulled(conversation_id)
            return Reader(conversation_id, handoff.chat_session_id, open=True)
        for chat_session_id, ended in (await self._outbox.chats_waiting(conversation_id)).items():
            if self._is_customer_token(token, chat_session_id):
                return Reader(conversation_id, chat_session_id, open=not ended)
        logger.warning(
            "Customer pull for conversation %s without its customer token refused (404).",
            conversation_id,
        )
        raise NotInRelay(conversation_id)

    def _is_customer_token(self, token: Optional[str], chat_session_id: str) -> bool:
        expected = self._settings.customer_token(chat_session_id)
        return bool(token) and hmac.compare_digest(
            str(token).encode("utf-8", "replace"), expected.encode("ascii")
        )

    def stream_url(self, reader: Reader) -> Tuple[str, int]:
        """The URL of ``reader``'s stream, its short-lived ticket inside, and how long it opens it."""
        ttl = max(1, int(self._settings.stream_ticket_ttl))
        ticket = self._settings.stream_ticket(
            reader.conversation_id, reader.chat_session_id, int(time.time()) + ttl
        )
        query = urlencode({"sender": reader.conversation_id, "ticket": ticket})
        return f"{self._routes_url}/stream?{query}", ttl

    async def ticket_reader(self, conversation_id: str, ticket: Optional[str]) -> Reader:
        """The reader a stream ticket stands for; NotInRelay (404) when forged or expired."""
        chat_session_id = self._settings.stream_ticket_chat(
            conversation_id, ticket or "", time.time()
        )
        if chat_session_id is None:
            logger.warning(
                "Stream for conversation %s without a valid ticket refused (404).", conversation_id
            )
            raise NotInRelay(conversation_id)
        return Reader(
            conversation_id,
            chat_session_id,
            open=await self.still_open(conversation_id, chat_session_id),
        )

    async def still_open(self, conversation_id: str, chat_session_id: str) -> bool:
        handoff = await self._switchboard.get(conversation_id)
        return handoff is not None and handoff.chat_session_id == chat_session_id

    async def acknowledge(self, reader: Reader, up_to: str) -> None:
        """The client has everything up to ``up_to``: taken off the outbox."""
        await self._outbox.acknowledge(reader.conversation_id, up_to)

    async def pull(self, reader: Reader, after: Optional[str], wait: float) -> List[Pulled]:
        """What waits for ``reader`` after ``after``, waiting up to ``wait`` s for it; handed out."""
        conversation_id = reader.conversation_id
        found = await self._outbox.wait(conversation_id, after, reader.chat_session_id, wait)
        await self._outbox.hand_out(conversation_id, found)
        return found

    # -- the agent's side: into the customer's outbox, before the hookpoint's ok ----

    async def _chat(self, chat_session_id: str) -> Handoff:
        """The open handoff of a chat a hookpoint names; NotInRelay (404) when none."""
        return await self._switchboard.wait_for_chat(chat_session_id, self._settings.new_chat_grace)

    async def _put(self, handoff: Handoff, item: ToCustomer) -> None:
        await self._outbox.put(
            handoff.conversation_id, handoff.channel, handoff.chat_session_id, item, handoff.route
        )

    async def _accept(
        self,
        chat_session_id: str,
        item: ToCustomer,
        *,
        record: Optional[RecordEntry] = None,
        activity: str = "agent",
        fill_agent: bool = False,
    ) -> Accepted:
        """Store an agent's event for the customer, in one switchboard step; NotInRelay if no chat.

        When no one drains the conversation's outbox and its customer can be
        reached from here, the step takes the drainer lease too, and the entry
        is sent from here at once (outbox.taken). An unknown chat is looked for
        again for ``new_chat_grace``, as a hookpoint may come a moment before the
        handoff is registered.
        """
        agent = item.agent
        named = agent is not None and bool(agent.name or agent.picture)
        deadline = time.monotonic() + self._settings.new_chat_grace
        while True:
            token = uuid.uuid4().hex
            accepted = await self._switchboard.accept(
                chat_session_id,
                item.to_json(),
                at=time.time(),
                record=to_json(record) if record is not None else None,
                activity=activity,
                agent=(agent.name, agent.picture) if named and agent is not None else None,
                fill_agent=fill_agent,
                lease=(token, self._outbox.timings.lease_ttl),
                lease_channels=self._outbox.sent_from_anywhere,
            )
            if accepted is not None:
                break
            if time.monotonic() >= deadline:
                raise NotInRelay(chat_session_id)
            await asyncio.sleep(NEW_CHAT_POLL)
        conversation_id = accepted.handoff.conversation_id
        if accepted.leased is not None and accepted.head is not None:
            self._outbox.taken(conversation_id, accepted.head, accepted.leased)
        else:
            self._outbox.kick(conversation_id, accepted.handoff.channel)
        return accepted

    async def agent_message(self, message: AgentMessage) -> None:
        """Store the agent's text for the customer; SwitchboardError (503) when it could not be."""
        record = RecordEntry(
            "agent",
            message.message,
            message.session_id,
            time.time(),
            agent_name=message.agent.name,
        )
        accepted = await self._accept(
            message.session_id,
            ToCustomer("text", text=message.message, agent=message.agent),
            record=record,
        )
        _first_reply(accepted.handoff)

    async def agent_file(self, upload: AgentUpload) -> None:
        """Store the agent's file and put its link in the customer's outbox."""
        # Looked up first: a file is not written to disk for a chat that is not open.
        handoff = await self._chat(upload.session_id)
        stored = await self._files.store(upload.file)
        link = FileLink(
            url=self._files.url_for(stored),
            filename=stored.filename,
            is_image=stored.content_type.startswith("image/"),
        )
        named = bool(upload.agent.name or upload.agent.picture)
        # uploadForCustomer names no agent: the chat's, kept from its messages, shows it.
        agent = upload.agent if named else AgentIdentity(handoff.agent_name, handoff.agent_picture)
        record = RecordEntry(
            "agent",
            f"[file: {stored.filename}]",
            upload.session_id,
            time.time(),
            agent_name=agent.name,
            attachment_url=link.url,
        )
        accepted = await self._accept(
            upload.session_id,
            ToCustomer("file", file=link, agent=upload.agent if named else None),
            record=record,
            fill_agent=not named,
        )
        _first_reply(accepted.handoff)

    async def agent_typing(self, typing: AgentTyping) -> None:
        await self._accept(
            typing.session_id, ToCustomer("typing", typing=typing.typing), activity="none"
        )

    async def agent_end(self, end: EndSession) -> None:
        """The agent ended the chat: hand back in the background (NotInRelay if not open)."""
        handoff = await self._chat(end.session_id)
        self._in_background(self._end_logged(handoff, HandoffOutcome.ENDED_BY_AGENT))

    def _in_background(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._ends.add(task)
        task.add_done_callback(self._ends.discard)

    async def _tell_agent_undelivered(self, entry: OutboxEntry, reason: str) -> None:
        """The customer's channel refused an agent's message for good: a marked line in the chat.

        Only the agent's own messages and files: a connector notice the channel
        refused is not the agent's ("did not reach the agent" would mislead).
        """
        if entry.item.kind not in ("text", "file") or entry.item.notice:
            return
        what = "file" if entry.item.kind == "file" else "message"
        await self._note_undelivered(entry.chat_session_id, entry.conversation_id, what, reason)

    async def agent_message_failed_later(
        self, conversation_id: str, what: str, reason: str
    ) -> None:
        """The customer's channel took an agent's message, then reported it undelivered.

        Twilio does so through a message's status callback (routes.py): a
        WhatsApp reply outside the 24-hour window may be accepted first and
        fail minutes later. Counted as a failed delivery and logged; the agent
        of the conversation's open chat is told as for a refusal at once. With
        the chat over, there is no one to tell; that is logged.
        """
        metrics.agent_delivery(what if what == "file" else "message", delivered=False)
        handoff = await self._switchboard.get(conversation_id)
        chat_session_id = handoff.chat_session_id if handoff is not None else None
        handoff_events.failure(
            "delivery", conversation_id, chat_session_id, kind=what, reason="refused_later"
        )
        if handoff is None:
            logger.warning(
                "The channel reported an agent's %s to conversation %s undelivered (%s), "
                "but no chat is open there any more: no agent to tell.",
                what,
                conversation_id,
                reason,
            )
            return
        await self._note_undelivered(handoff.chat_session_id, conversation_id, what, reason)

    async def _note_undelivered(
        self, chat_session_id: str, conversation_id: str, what: str, reason: str
    ) -> None:
        """A marked line in the chat: the agent's last ``what`` did not reach the customer.

        Sent without a messageNumber: it is the connector's note, not a customer
        turn, and must not take a customer's number. A chat that has ended
        cannot hear it; that is logged.
        """
        note = f"[Not delivered to the customer: your last {what}. The channel said: {reason}]"
        try:
            await self._client.notify_user_new_chat_message(
                chat_session_id=chat_session_id, message=note, message_number=None
            )
        except OmnideskError as error:
            logger.error(
                "Could not tell the agent of chat %s (conversation %s) that a %s was not "
                "delivered: %s",
                chat_session_id,
                conversation_id,
                what,
                error,
            )
            return
        logger.info(
            "Agent of chat %s told that a %s did not reach conversation %s.",
            chat_session_id,
            what,
            conversation_id,
        )

    async def agent_file_at(self, token: str, filename: str) -> Optional[StoredFile]:
        """An agent's file as linked to the customer, or None."""
        return await self._files.lookup(token, filename)

    # -- the end of a chat -------------------------------------------------------------

    async def _end_logged(self, handoff: Handoff, outcome: HandoffOutcome) -> None:
        try:
            await self.end(handoff, outcome)
        except Exception as error:
            logger.error(
                "Could not end chat %s of conversation %s: %s: %s",
                handoff.chat_session_id,
                handoff.conversation_id,
                type(error).__name__,
                error,
            )

    async def end(self, handoff: Handoff, outcome: HandoffOutcome) -> bool:
        """End relay mode once and hand the customer back; False when someone else ended it.

        The end takes its place in the conversation's line like a turn, so a
        turn already under way (a message still being retried) reaches the
        agent first, and a turn typed after the end goes to the bot.
        """
        wait = self._settings.turn_wait
        deadline = time.monotonic() + wait
        async with self._line.place(handoff.conversation_id, wait) as first:
            if not first:
                logger.warning(
                    "The end of chat %s waited %.0f s for the turns of conversation %s; it goes on.",
                    handoff.chat_session_id,
                    wait,
                    handoff.conversation_id,
                )
            remaining = max(1.0, deadline - time.monotonic())
            async with self._switchboard.in_line(handoff.conversation_id, False, remaining):
                return await self._end_in_line(handoff, outcome)

    async def _end_in_line(self, handoff: Handoff, outcome: HandoffOutcome) -> bool:
        """End relay mode, holding the conversation's place in line.

        The switchboard ends the handoff; when the end is ours, the handoff stays
        ``ending`` until Omnidesk has heard of it (the sweeper tells it again
        while it has not). The relayed turns are written to the tracker, and the
        bot takes the conversation back; its words go to the outbox after the
        agent's last messages. From the switchboard's end on, every step that
        fails is logged and the end goes on: a customer left "with an agent" in
        the bot's slots could never escalate again.
        """
        ours = outcome is not HandoffOutcome.ENDED_BY_AGENT
        ended = await self._switchboard.end(
            handoff.conversation_id,
            handoff.chat_session_id,
            tell_omnidesk=outcome.value if ours else None,
        )
        if ended is None:
            return False
        self._turns.seen(ended.conversation_id, None)
        if ours:
            await self._tell_omnidesk_end(ended)
        # A failed write is logged in flush and stays buffered for the sweeper: the
        # customer is handed back to the bot whatever the tracker store says.
        with contextlib.suppress(Exception):
            await self._record.flush(ended.conversation_id)
        logger.info(
            "Handoff ended (%s): conversation %s, chat %s.",
            outcome.value,
            ended.conversation_id,
            ended.chat_session_id,
        )
        handoff_events.ended(ended.conversation_id, ended.chat_session_id, outcome.value)
        try:
            handed_back = await self._bot.hand_back(ended, outcome)
        except Exception as error:
            _log_step_failure("hand back to the bot", ended, error)
            handed_back = False
        if not handed_back:
            await self._notices.tell(ended, CHAT_ENDED)
        await self._outbox.mark_ended(
            ended.conversation_id, ended.channel, ended.chat_session_id, outcome.value
        )
        return True

    async def _tell_omnidesk_end(self, ended: Handoff) -> bool:
        """Tell Omnidesk the chat ended on our side; True once it has heard (or refused for good).

        Until then the handoff stays ``ending`` in the switchboard, so the
        sweeper tries again (``retry_end``): the chat does not stay open on the
        agent's desk because one call failed or its process stopped.
        """
        try:
            await self._client.notify_user_end_chat(chat_session_id=ended.chat_session_id)
        except OmnideskError as error:
            log_refused("end of chat", ended, error)
            if error.retryable:
                logger.warning(
                    "Omnidesk will be told of the end of chat %s (conversation %s) again.",
                    ended.chat_session_id,
                    ended.conversation_id,
                )
                return False
        try:
            await self._switchboard.told_omnidesk(ended.conversation_id, ended.chat_session_id)
        except SwitchboardError as error:
            logger.warning(
                "Could not note that Omnidesk heard of the end of chat %s: %s",
                ended.chat_session_id,
                error,
            )
            return False
        return True

    async def retry_end(self, handoff: Handoff, now: Optional[float] = None) -> None:
        """Tell Omnidesk again of an end it has not heard of; give up after ``ENDING_KEPT``."""
        at = time.time() if now is None else now
        if handoff.ended_at is not None and at - handoff.ended_at > ENDING_KEPT:
            logger.error(
                "Omnidesk never heard of the end of chat %s (conversation %s) in %.0f s; "
                "it is forgotten. Close it on the agent's desk.",
                handoff.chat_session_id,
                handoff.conversation_id,
                ENDING_KEPT,
            )
            await self._switchboard.told_omnidesk(handoff.conversation_id, handoff.chat_session_id)
            return
        await self._tell_omnidesk_end(handoff)

    # -- what the sweeper does ------------------------------------------------------------

    async def open_handoffs(self) -> List[Handoff]:
        """Every open handoff, for the sweeper."""
        return await self._switchboard.all()

    async def remind_unanswered(self, handoff: Handoff) -> bool:
        """Tell the customer, once per handoff, that no agent answered yet; False if told before."""
        if not await self._switchboard.claim_wait_notice(handoff.conversation_id):
            return False
        await self._notices.tell(handoff, AGENT_WAIT)
        return True

    async def write_due_records(self) -> None:
        """Write the relayed turns that waited ``record_interval`` to their trackers."""
        await self._record.flush_due()

    async def remove_old_files(self, older_than: float) -> int:
        """Remove agent files stored longer than ``older_than`` seconds ago; how many."""
        return await self._files.remove_older_than(older_than)

    # -- counts for the metrics -----------------------------------------------------------

    async def open_count(self) -> int:
        """How many handoffs are open (every instance sees the same)."""
        return await self._switchboard.count_open()

    async def waiting_count(self) -> int:
        """How many entries wait in outboxes (every instance sees the same)."""
        return await self._outbox.count_waiting()

    # -- lifecycle ---------------------------------------------------------------------------

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until the turns, ends and deliveries under way are done (tests use it)."""
        deadline = time.monotonic() + timeout
        under_way = self._tasks | self._ends
        if under_way:
            await asyncio.wait(under_way, timeout=timeout)
        await self._outbox.wait_idle(max(0.0, deadline - time.monotonic()))
        if self._ends:
            await asyncio.wait(set(self._ends), timeout=max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        """Finish what is under way (bounded), write what is buffered, close every part."""
        try:
            under_way = self._tasks | self._ends
            if under_way:
                await asyncio.wait(under_way, timeout=5.0)
            await self._outbox.close()
            await self._record.flush_all()
        finally:
            await self._client.close()
            await self._switchboard.close()
            self._files.close()


def _first_reply(handoff: Handoff) -> None:
    """The agent's first message or file of the handoff: how long the customer waited.

    ``handoff`` is as read before this reply touched it. Two first replies landing
    on two instances at once may both count; the histogram tolerates that.
    """
    if not handoff.agent_replied:
        handoff_events.agent_first_reply(
            handoff.conversation_id, handoff.chat_session_id, time.time() - handoff.started_at
        )


def _log_step_failure(what: str, handoff: Handoff, error: Exception) -> None:
    logger.error(
        "Ending chat %s of conversation %s: could not %s it (%s: %s); the end goes on.",
        handoff.chat_session_id,
        handoff.conversation_id,
        what,
        type(error).__name__,
        error,
    )
    handoff_events.failure(f"end: {what}", handoff.conversation_id, handoff.chat_session_id, error)
