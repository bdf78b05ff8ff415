"""The switchboard: which conversation is with an agent, and the line its turns stand in.

Read on every customer turn, so every operation is O(1) and never touches the
tracker. Two implementations share one async interface, modeled on Rasa's lock
store: ``InMemorySwitchboard`` here, for a single process, and
``RedisSwitchboard`` (redis_switchboard.py), for several Rasa instances and for
handoffs that survive a restart. Each mutation that two callers may race on
(taking the next messageNumber, ending a handoff, sending the wait notice once)
is atomic in both.

Order: every customer turn of a conversation takes its place in the
conversation's line the moment it arrives, and is served in that order, bot
turns, relayed turns and the leave command alike. In one process that is a
``LocalLine`` (a FIFO per conversation, no polling: each place is woken by the
one before it). With several instances, ``in_line`` adds the cross-instance
part: a place in a Redis list per conversation, taken in one script that also
reads the handoff and, when the place is first, numbers the turn; the place
ahead wakes the next through pub/sub when it leaves. A place lives on a lease
its holder renews, so a crashed instance blocks the line for at most the lease.

A handoff that ended on our side (the customer left, it timed out) stays
``ending`` until Omnidesk has heard of the end: it no longer routes anything,
and the sweeper tells Omnidesk again until it has (``told_omnidesk``).

Where relayed turns wait for the tracker (``RecordBuffer``) lives here too, with
the handoffs: a relayed turn is kept in the same step that leaves its place.
"""

import abc
import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any, AsyncIterator, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from connectors.omnidesk.channel.outbox_store import InMemoryOutboxStore, OutboxStore, Row

logger = logging.getLogger(__name__)

NEW_CHAT_POLL = 0.02  # seconds between looks for a chat that is about to register
# How long a place in a conversation's line counts without its holder renewing
# it; the holder renews it every third of that.
LINE_LEASE = 15.0


class SwitchboardError(RuntimeError):
    """The switchboard's store failed or holds data this version cannot read."""


class UnreadableHandoff(SwitchboardError):
    """One stored handoff cannot be read (a format this version does not know, or damage)."""


class NotInRelay(LookupError):
    """The conversation or Omnidesk chat is not with an agent now."""


@dataclass(frozen=True)
class Handoff:
    """One conversation in relay mode: its customer is talking to an Omnidesk agent."""

    conversation_id: str
    chat_session_id: str
    channel: str
    next_message_number: int
    started_at: float
    last_activity: float
    last_agent_activity: Optional[float] = None
    wait_notice_sent: bool = False
    # The agent of the chat's latest message that named one: uploadForCustomer
    # carries no name or picture (omnidesk-api.txt), so a file is shown as theirs.
    agent_name: Optional[str] = None
    agent_picture: Optional[str] = None
    # Set (to the outcome) once the chat ended on our side, until Omnidesk has
    # heard of it: such a handoff routes nothing.
    ending: Optional[str] = None
    ended_at: Optional[float] = None
    # Where the customer's channel sends a reply in this conversation, when a
    # channel needs more than the conversation id: Slack's channel and thread,
    # Teams' conversation reference (lines/ reads it; docs/channel.md).
    route: Optional[Dict[str, str]] = None

    @property
    def agent_replied(self) -> bool:
        return self.last_agent_activity is not None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> "Handoff":
        try:
            data = json.loads(raw)
            return cls(
                conversation_id=str(data["conversation_id"]),
                chat_session_id=str(data["chat_session_id"]),
                channel=str(data["channel"]),
                next_message_number=int(data["next_message_number"]),
                started_at=float(data["started_at"]),
                last_activity=float(data["last_activity"]),
                last_agent_activity=optional_number(data.get("last_agent_activity")),
                wait_notice_sent=bool(data.get("wait_notice_sent", False)),
                agent_name=optional_text(data.get("agent_name")),
                agent_picture=optional_text(data.get("agent_picture")),
                ending=optional_text(data.get("ending")),
                ended_at=optional_number(data.get("ended_at")),
                route=route_from(data.get("route")),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise UnreadableHandoff(
                f"a stored handoff could not be read ({error}); "
                "clear the switchboard's keys if the format changed"
            ) from error


def optional_text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def optional_number(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def route_from(value: Any) -> Optional[Dict[str, str]]:
    """A stored route: a mapping of text to text, or None (handoffs stored before routes)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"route is {type(value).__name__}, not a mapping")
    return {str(key): str(item) for key, item in value.items()}


def new_handoff(
    conversation_id: str,
    chat_session_id: str,
    channel: str,
    next_message_number: int,
    now: Optional[float] = None,
    route: Optional[Mapping[str, str]] = None,
) -> Handoff:
    at = time.time() if now is None else now
    return Handoff(
        conversation_id=conversation_id,
        chat_session_id=chat_session_id,
        channel=channel,
        next_message_number=next_message_number,
        started_at=at,
        last_activity=at,
        route=dict(route) if route else None,
    )


# -- the line ---------------------------------------------------------------------------


@dataclass
class Place:
    """A turn's place in its conversation's line.

    ``first``: the turn is served now (False only when the wait ran out). When
    first, ``handoff`` is the conversation's open handoff as read at that moment
    (None: with the bot) and ``message_number`` the turn's messageNumber, taken
    when the turn asked for one and the conversation is with an agent. What the
    holder puts in ``kept`` (relayed turns for the tracker, as JSON) is stored in
    the same step that gives the place up.
    """

    conversation_id: str
    first: bool
    handoff: Optional[Handoff] = None
    message_number: Optional[int] = None
    ticket: str = field(default_factory=lambda: uuid.uuid4().hex)
    kept: List[str] = field(default_factory=list)


class LocalLine:
    """One FIFO per conversation in this process: each place is woken by the one before it.

    A place is taken at once, before anything is awaited, so turns are served in
    the order they arrived here. Nothing polls: leaving hands the line to the
    next place directly. A conversation with no one waiting holds no memory.
    """

    def __init__(self) -> None:
        self._lines: Dict[str, Deque[asyncio.Future[None]]] = {}

    @contextlib.asynccontextmanager
    async def place(self, conversation_id: str, wait: float) -> AsyncIterator[bool]:
        """Stand in line; yields True once it is this place's turn, False if ``wait`` ran out."""
        line = self._lines.setdefault(conversation_id, deque())
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line.append(mine)
        if line[0] is mine:
            mine.set_result(None)
        try:
            if not mine.done():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(mine), max(0.0, wait))
            yield mine.done()
        finally:
            self._leave(conversation_id, line, mine)

    def _leave(
        self,
        conversation_id: str,
        line: "Deque[asyncio.Future[None]]",
        mine: "asyncio.Future[None]",
    ) -> None:
        was_first = bool(line) and line[0] is mine
        with contextlib.suppress(ValueError):
            line.remove(mine)
        if not mine.done():
            mine.cancel()
        if was_first and line and not line[0].done():
            line[0].set_result(None)
        if not line and self._lines.get(conversation_id) is line:
            del self._lines[conversation_id]

    def waiting(self, conversation_id: str) -> int:
        """How many places the conversation's line holds here now."""
        return len(self._lines.get(conversation_id, ()))

    def __len__(self) -> int:
        """How many conversations have a line here now."""
        return len(self._lines)


# -- where relayed turns wait for the tracker ------------------------------------------------


class RecordBuffer(abc.ABC):
    """Relayed turns waiting for the tracker, as JSON, oldest first per conversation."""

    @abc.abstractmethod
    async def add(self, conversation_id: str, raw: str) -> None: ...

    @abc.abstractmethod
    async def peek(self, conversation_id: str) -> List[str]:
        """Every waiting entry of ``conversation_id``, oldest first."""

    @abc.abstractmethod
    async def drop(self, conversation_id: str, count: int) -> None:
        """Remove the ``count`` oldest entries (they are in the tracker now)."""

    @abc.abstractmethod
    async def due(self, older_than: Optional[float]) -> List[str]:
        """Conversations whose oldest entry waited ``older_than`` seconds (None: all)."""

    @abc.abstractmethod
    async def lock(self, conversation_id: str) -> Optional[str]:
        """Take the conversation's flush lease: a token, or None when another holds it."""

    @abc.abstractmethod
    async def unlock(self, conversation_id: str, token: str) -> None: ...


@dataclass
class _Waiting:
    entries: List[str] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)  # when its oldest entry came


class MemoryRecordBuffer(RecordBuffer):
    """Entries of this process, for the in-memory switchboard."""

    def __init__(self) -> None:
        self._buffers: Dict[str, _Waiting] = {}
        self._locks: Dict[str, str] = {}

    async def add(self, conversation_id: str, raw: str) -> None:
        self._buffers.setdefault(conversation_id, _Waiting()).entries.append(raw)

    async def peek(self, conversation_id: str) -> List[str]:
        buffer = self._buffers.get(conversation_id)
        return list(buffer.entries) if buffer is not None else []

    async def drop(self, conversation_id: str, count: int) -> None:
        buffer = self._buffers.get(conversation_id)
        if buffer is None:
            return
        del buffer.entries[:count]
        if not buffer.entries:
            del self._buffers[conversation_id]
        else:
            buffer.since = time.monotonic()

    async def due(self, older_than: Optional[float]) -> List[str]:
        cutoff = None if older_than is None else time.monotonic() - older_than
        return [
            conversation_id
            for conversation_id, buffer in self._buffers.items()
            if cutoff is None or buffer.since <= cutoff
        ]

    async def lock(self, conversation_id: str) -> Optional[str]:
        if conversation_id in self._locks:
            return None
        token = self._locks[conversation_id] = uuid.uuid4().hex
        return token

    async def unlock(self, conversation_id: str, token: str) -> None:
        if self._locks.get(conversation_id) == token:
            del self._locks[conversation_id]


# -- an agent's event, stored for the customer ------------------------------------------------


@dataclass
class Accepted:
    """An agent's message, file or typing, stored in the customer's outbox (``accept``).

    ``handoff`` is the chat's handoff as it was before the event touched it.
    ``leased``: the drainer lease taken for the caller when no one held it, with
    ``head`` the outbox's oldest entry, so the caller sends it at once without
    reading it back.
    """

    handoff: Handoff
    entry_id: str
    leased: Optional[str] = None
    head: Optional[Row] = None


def entry_fields(handoff: Handoff, item_json: str, at: float) -> Dict[str, str]:
    """An outbox entry's fields: the item and the envelope to send it after the handoff is gone.

    The same layout as ``outbox.OutboxEntry.to_fields`` (and the Redis accept script).
    """
    return {
        "e": item_json,
        "c": handoff.conversation_id,
        "ch": handoff.channel,
        "chat": handoff.chat_session_id,
        "at": repr(at),
        "r": json.dumps(handoff.route, sort_keys=True) if handoff.route else "",
    }


def with_agent(item_json: str, name: Optional[str], picture: Optional[str]) -> str:
    data = json.loads(item_json)
    data["agent"] = {"name": name, "picture": picture}
    return json.dumps(data, sort_keys=True)


# -- the switchboard -----------------------------------------------------------------------


class Switchboard(abc.ABC):
    """Handoff state, keyed by conversation id and by Omnidesk chatSessionID.

    It also makes where the relayed turns wait for the tracker (``records``) and
    where the customer's outbox lives (``outbox_store``): one store, one layout.
    """

    records: RecordBuffer
    outbox_store: OutboxStore

    @abc.abstractmethod
    async def start(self, handoff: Handoff) -> Optional[Handoff]:
        """Put a conversation in relay mode; return the handoff it replaced, if any."""

    @abc.abstractmethod
    async def get(self, conversation_id: str) -> Optional[Handoff]:
        """The conversation's open handoff, or None when it is with the bot."""

    @abc.abstractmethod
    async def find_by_chat_session(self, chat_session_id: str) -> Optional[Handoff]:
        """The open handoff of an Omnidesk chat, or None when that chat is not open."""

    @abc.abstractmethod
    def in_line(
        self, conversation_id: str, numbered: bool, wait: float
    ) -> "contextlib.AbstractAsyncContextManager[Place]":
        """The turn's place in the conversation's line across instances (an async context).

        Entered once the turn is first in this process's ``LocalLine``. Yields a
        ``Place`` that is ``first`` when the turn is served, with the handoff
        and, when ``numbered``, the turn's messageNumber; not first when
        ``wait`` seconds ran out. Leaving gives the place up and stores what the
        holder put in ``place.kept``.
        """

    @abc.abstractmethod
    async def touch(
        self,
        conversation_id: str,
        *,
        agent: bool = False,
        now: Optional[float] = None,
        agent_name: Optional[str] = None,
        agent_picture: Optional[str] = None,
    ) -> None:
        """Record activity (of the agent when ``agent``); a no-op when not in relay.

        With ``agent_name`` or ``agent_picture`` the handoff keeps them as the
        chat's agent, for the files that come without either.
        """

    @abc.abstractmethod
    async def accept(
        self,
        chat_session_id: str,
        item_json: str,
        *,
        at: float,
        record: Optional[str] = None,
        activity: str = "agent",
        agent: Optional[Tuple[Optional[str], Optional[str]]] = None,
        fill_agent: bool = False,
        lease: Optional[Tuple[str, float]] = None,
        lease_channels: Sequence[str] = (),
    ) -> Optional[Accepted]:
        """Store an agent's event for the customer of chat ``chat_session_id``, in one step.

        Finds the chat's open handoff (None when there is none), appends the
        entry to its outbox, records the activity (``activity``: "agent", "other"
        or "none") and, with ``agent`` (name, picture), the chat's agent; with
        ``fill_agent`` the item takes the chat's agent when it names none; keeps
        ``record`` for the tracker; with ``lease`` (token, seconds) takes the
        outbox's drainer lease when it is free and the handoff's channel is one
        of ``lease_channels`` (those the caller can send on from here).
        """

    @abc.abstractmethod
    async def claim_wait_notice(self, conversation_id: str) -> bool:
        """True exactly once per handoff: for the caller that should send the wait notice."""

    @abc.abstractmethod
    async def end(
        self,
        conversation_id: str,
        chat_session_id: Optional[str] = None,
        tell_omnidesk: Optional[str] = None,
    ) -> Optional[Handoff]:
        """Atomically end relay mode and return the ended handoff.

        With ``chat_session_id`` only that chat is ended (a stale end of an older
        chat leaves a newer one alone). None when there was nothing to end, so of
        two racing callers exactly one gets the handoff. With ``tell_omnidesk``
        (the outcome) the handoff stays ``ending`` until ``told_omnidesk``.
        """

    @abc.abstractmethod
    async def told_omnidesk(self, conversation_id: str, chat_session_id: str) -> None:
        """Omnidesk has heard of the end of ``chat_session_id``: forget it."""

    @abc.abstractmethod
    async def all(self) -> List[Handoff]:
        """Every handoff, open or ending, for the background sweeper (not the hot path)."""

    async def count_open(self) -> int:
        """How many handoffs are open, for the metrics (every instance sees the same)."""
        return len([h for h in await self.all() if h.ending is None])

    async def claim_sweeper(self, holder: str, lease_seconds: float) -> bool:
        """True when ``holder`` may sweep now: the sweeper lease is free or already its own.

        One process holds every in-memory handoff, so it always may.
        """
        return True

    async def release_sweeper(self, holder: str) -> None:  # noqa: B027 - optional hook
        """Give the sweeper lease up at shutdown, so another instance sweeps at once."""

    async def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release connections; the in-memory switchboard has none."""

    async def wait_for_chat(self, chat_session_id: str, grace: float) -> Handoff:
        """The open handoff of chat ``chat_session_id``, looked for again for ``grace`` seconds.

        The action opens the Omnidesk chat and the channel registers it a few
        milliseconds later, when the action's control payload comes back through
        the turn. Omnidesk may call a hookpoint in between (an automatic greeting,
        a quick agent), so an unknown chat is not refused at once. NotInRelay
        when it is still unknown after ``grace``.
        """
        deadline = time.monotonic() + grace
        while True:
            handoff = await self.find_by_chat_session(chat_session_id)
            if handoff is not None:
                return handoff
            if time.monotonic() >= deadline:
                raise NotInRelay(chat_session_id)
            await asyncio.sleep(NEW_CHAT_POLL)


class InMemorySwitchboard(Switchboard):
    """Handoffs of this process only. Lost on restart; fine for one Rasa instance.

    Its line needs no cross-instance part: the process's ``LocalLine`` already
    serves a conversation's turns one at a time, in order.
    """

    outbox_store: InMemoryOutboxStore

    def __init__(self) -> None:
        self._by_conversation: Dict[str, Handoff] = {}
        self._by_chat: Dict[str, str] = {}
        # Ended on our side, Omnidesk not told yet: by chat, so a new handoff of
        # the same conversation does not replace it.
        self._ending: Dict[str, Handoff] = {}
        self.records = MemoryRecordBuffer()
        self.outbox_store = InMemoryOutboxStore()

    async def start(self, handoff: Handoff) -> Optional[Handoff]:
        previous = self._by_conversation.get(handoff.conversation_id)
        if previous is not None:
            self._by_chat.pop(previous.chat_session_id, None)
        self._by_conversation[handoff.conversation_id] = handoff
        self._by_chat[handoff.chat_session_id] = handoff.conversation_id
        return previous

    async def get(self, conversation_id: str) -> Optional[Handoff]:
        return self._by_conversation.get(conversation_id)

    async def count_open(self) -> int:
        # As in Redis: a chat whose end Omnidesk has not heard of yet still counts.
        return len(self._by_conversation) + len(self._ending)

    async def find_by_chat_session(self, chat_session_id: str) -> Optional[Handoff]:
        conversation_id = self._by_chat.get(chat_session_id)
        if conversation_id is None:
            return None
        return self._by_conversation.get(conversation_id)

    @contextlib.asynccontextmanager
    async def in_line(
        self, conversation_id: str, numbered: bool, wait: float
    ) -> AsyncIterator[Place]:
        place = Place(
            conversation_id, first=True, handoff=self._by_conversation.get(conversation_id)
        )
        if numbered and place.handoff is not None:
            place.message_number = place.handoff.next_message_number
            place.handoff = replace(
                place.handoff,
                next_message_number=place.message_number + 1,
                last_activity=time.time(),
            )
            self._by_conversation[conversation_id] = place.handoff
        try:
            yield place
        finally:
            for raw in place.kept:
                await self.records.add(conversation_id, raw)

    async def touch(
        self,
        conversation_id: str,
        *,
        agent: bool = False,
        now: Optional[float] = None,
        agent_name: Optional[str] = None,
        agent_picture: Optional[str] = None,
    ) -> None:
        handoff = self._by_conversation.get(conversation_id)
        if handoff is None:
            return
        at = time.time() if now is None else now
        if agent:
            handoff = replace(handoff, last_activity=at, last_agent_activity=at)
        else:
            handoff = replace(handoff, last_activity=at)
        if agent_name is not None or agent_picture is not None:
            handoff = replace(handoff, agent_name=agent_name, agent_picture=agent_picture)
        self._by_conversation[conversation_id] = handoff

    async def accept(
        self,
        chat_session_id: str,
        item_json: str,
        *,
        at: float,
        record: Optional[str] = None,
        activity: str = "agent",
        agent: Optional[Tuple[Optional[str], Optional[str]]] = None,
        fill_agent: bool = False,
        lease: Optional[Tuple[str, float]] = None,
        lease_channels: Sequence[str] = (),
    ) -> Optional[Accepted]:
        handoff = await self.find_by_chat_session(chat_session_id)
        if handoff is None:
            return None
        conversation_id = handoff.conversation_id
        if fill_agent and (handoff.agent_name or handoff.agent_picture):
            item_json = with_agent(item_json, handoff.agent_name, handoff.agent_picture)
        store = self.outbox_store
        entry_id = await store.put(conversation_id, entry_fields(handoff, item_json, at))
        if activity != "none":
            name, picture = agent if agent is not None else (None, None)
            await self.touch(
                conversation_id,
                agent=activity == "agent",
                now=at,
                agent_name=name,
                agent_picture=picture,
            )
        if record is not None:
            await self.records.add(conversation_id, record)
        accepted = Accepted(handoff, entry_id)
        if (
            lease is not None
            and handoff.channel in lease_channels
            and store.lease_if_free(conversation_id, *lease)
        ):
            accepted.leased = lease[0]
            accepted.head = (await store.peek(conversation_id, 1))[0]
        return accepted

    async def claim_wait_notice(self, conversation_id: str) -> bool:
        handoff = self._by_conversation.get(conversation_id)
        if handoff is None or handoff.wait_notice_sent:
            return False
        self._by_conversation[conversation_id] = replace(handoff, wait_notice_sent=True)
        return True

    async def end(
        self,
        conversation_id: str,
        chat_session_id: Optional[str] = None,
        tell_omnidesk: Optional[str] = None,
    ) -> Optional[Handoff]:
        handoff = self._by_conversation.get(conversation_id)
        if handoff is None:
            return None
        if chat_session_id is not None and handoff.chat_session_id != chat_session_id:
            return None
        del self._by_conversation[conversation_id]
        self._by_chat.pop(handoff.chat_session_id, None)
        if tell_omnidesk is not None:
            self._ending[handoff.chat_session_id] = replace(
                handoff, ending=tell_omnidesk, ended_at=time.time()
            )
        return handoff

    async def told_omnidesk(self, conversation_id: str, chat_session_id: str) -> None:
        self._ending.pop(chat_session_id, None)

    async def all(self) -> List[Handoff]:
        return [*self._by_conversation.values(), *self._ending.values()]


__all__ = [
    "LINE_LEASE",
    "Accepted",
    "Handoff",
    "InMemorySwitchboard",
    "LocalLine",
    "MemoryRecordBuffer",
    "NotInRelay",
    "Place",
    "RecordBuffer",
    "Switchboard",
    "SwitchboardError",
    "UnreadableHandoff",
    "entry_fields",
    "new_handoff",
    "optional_number",
    "optional_text",
]
