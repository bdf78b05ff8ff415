"""The switchboard: which conversation is with an agent right now.

Read on every customer turn, so every operation is O(1) and never touches the
tracker. Two implementations share one async interface, modeled on Rasa's lock
store: ``InMemorySwitchboard`` here, for a single process, and
``RedisSwitchboard`` (redis_switchboard.py), for several Rasa instances and for
handoffs that survive a restart. Each
mutation that two callers may race on (taking the next messageNumber, ending a
handoff, sending the wait notice once) is atomic in both.

Order to Omnidesk: a customer turn is sent under the chat's *turn lease*
(``begin_turn``): one sender per chat at a time, whichever instance it runs
on. Taking the lease also numbers the turn and records the activity, in one
step (one Lua script, one round trip in Redis). The lease expires on its own
after ``lease_seconds``, so a crashed holder blocks nobody for longer; each
grant carries a fence (a counter per handoff), and ``finish_turn`` with a
fence that is no longer the holder's reports that the lease was lost.
"""

import abc
import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Tuple

logger = logging.getLogger(__name__)

NEW_CHAT_POLL = 0.02  # seconds between looks for a chat that is about to register
TURN_POLL = 0.01  # seconds between asks for a chat's turn lease another sender holds


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
                last_agent_activity=(
                    None
                    if data.get("last_agent_activity") is None
                    else float(data["last_agent_activity"])
                ),
                wait_notice_sent=bool(data.get("wait_notice_sent", False)),
                agent_name=optional_text(data.get("agent_name")),
                agent_picture=optional_text(data.get("agent_picture")),
                route=route_from(data.get("route")),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise UnreadableHandoff(
                f"a stored handoff could not be read ({error}); "
                "clear the switchboard's keys if the format changed"
            ) from error


@dataclass(frozen=True)
class TurnTicket:
    """The answer to ``begin_turn``: the chat's handoff and, when granted, the lease.

    ``message_number`` is None when another sender holds the chat's lease: the
    caller waits (``wait_turn``) and asks again.
    """

    handoff: Handoff
    message_number: Optional[int] = None
    fence: int = 0

    @property
    def granted(self) -> bool:
        return self.message_number is not None


def optional_text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


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


class Switchboard(abc.ABC):
    """Handoff state, keyed by conversation id and by Omnidesk chatSessionID."""

    @abc.abstractmethod
    async def start(self, handoff: Handoff) -> Optional[Handoff]:
        """Put a conversation in relay mode; return the handoff it replaced, if any."""

    @abc.abstractmethod
    async def get(self, conversation_id: str) -> Optional[Handoff]:
        """The conversation's handoff, or None when it is with the bot."""

    @abc.abstractmethod
    async def find_by_chat_session(self, chat_session_id: str) -> Optional[Handoff]:
        """The handoff of an Omnidesk chat, or None when that chat is not open."""

    @abc.abstractmethod
    async def begin_turn(
        self, conversation_id: str, lease_seconds: float, now: Optional[float] = None
    ) -> Optional[TurnTicket]:
        """Take the chat's turn lease, the next messageNumber and record the activity, at once.

        None when the conversation is not in relay. A ticket that is not
        ``granted`` when another sender holds an unexpired lease (nothing changed).
        """

    @abc.abstractmethod
    async def finish_turn(self, conversation_id: str, fence: int) -> bool:
        """Give the lease back; False when it was no longer ours (expired and taken over)."""

    async def wait_turn(self, conversation_id: str, timeout: float) -> None:
        """Wait a little before asking for a busy lease again (at most ``timeout``)."""
        await asyncio.sleep(min(timeout, TURN_POLL))

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
    async def claim_wait_notice(self, conversation_id: str) -> bool:
        """True exactly once per handoff: for the caller that should send the wait notice."""

    @abc.abstractmethod
    async def end(
        self, conversation_id: str, chat_session_id: Optional[str] = None
    ) -> Optional[Handoff]:
        """Atomically end relay mode and return the ended handoff.

        With ``chat_session_id`` only that chat is ended (a stale end of an older
        chat leaves a newer one alone). None when there was nothing to end, so of
        two racing callers exactly one gets the handoff.
        """

    @abc.abstractmethod
    async def all(self) -> List[Handoff]:
        """Every open handoff, for the background sweeper (not the hot path)."""

    async def count_open(self) -> int:
        """How many handoffs are open, for the metrics (every instance sees the same)."""
        return len(await self.all())

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
    """Handoffs of this process only. Lost on restart; fine for one Rasa instance."""

    def __init__(self) -> None:
        self._by_conversation: Dict[str, Handoff] = {}
        self._by_chat: Dict[str, str] = {}
        # The turn lease per conversation: (fence, expiry on the monotonic clock).
        self._leases: Dict[str, Tuple[int, float]] = {}
        self._fences: Dict[str, int] = {}
        self._released: Dict[str, asyncio.Event] = {}

    async def start(self, handoff: Handoff) -> Optional[Handoff]:
        previous = self._by_conversation.get(handoff.conversation_id)
        if previous is not None:
            self._by_chat.pop(previous.chat_session_id, None)
        self._by_conversation[handoff.conversation_id] = handoff
        self._by_chat[handoff.chat_session_id] = handoff.conversation_id
        self._drop_lease(handoff.conversation_id)
        return previous

    async def get(self, conversation_id: str) -> Optional[Handoff]:
        return self._by_conversation.get(conversation_id)

    async def count_open(self) -> int:
        return len(self._by_conversation)

    async def find_by_chat_session(self, chat_session_id: str) -> Optional[Handoff]:
        conversation_id = self._by_chat.get(chat_session_id)
        if conversation_id is None:
            return None
        return self._by_conversation.get(conversation_id)

    async def begin_turn(
        self, conversation_id: str, lease_seconds: float, now: Optional[float] = None
    ) -> Optional[TurnTicket]:
        handoff = self._by_conversation.get(conversation_id)
        if handoff is None:
            return None
        held = self._leases.get(conversation_id)
        if held is not None and held[1] > time.monotonic():
            return TurnTicket(handoff)
        fence = self._fences.get(conversation_id, 0) + 1
        self._fences[conversation_id] = fence
        self._leases[conversation_id] = (fence, time.monotonic() + lease_seconds)
        number = handoff.next_message_number
        at = time.time() if now is None else now
        handoff = replace(handoff, next_message_number=number + 1, last_activity=at)
        self._by_conversation[conversation_id] = handoff
        return TurnTicket(handoff, number, fence)

    async def finish_turn(self, conversation_id: str, fence: int) -> bool:
        held = self._leases.get(conversation_id)
        if held is None:
            # Ended meanwhile (the lease went with the handoff), or taken over and finished.
            return (
                conversation_id not in self._by_conversation
                or self._fences.get(conversation_id) == fence
            )
        if held[0] != fence:
            return False
        self._drop_lease(conversation_id)
        return True

    async def wait_turn(self, conversation_id: str, timeout: float) -> None:
        held = self._leases.get(conversation_id)
        if held is None:
            return
        event = self._released.setdefault(conversation_id, asyncio.Event())
        wait = min(timeout, max(0.0, held[1] - time.monotonic()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), wait)

    def _drop_lease(self, conversation_id: str) -> None:
        self._leases.pop(conversation_id, None)
        event = self._released.pop(conversation_id, None)
        if event is not None:
            event.set()

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

    async def claim_wait_notice(self, conversation_id: str) -> bool:
        handoff = self._by_conversation.get(conversation_id)
        if handoff is None or handoff.wait_notice_sent:
            return False
        self._by_conversation[conversation_id] = replace(handoff, wait_notice_sent=True)
        return True

    async def end(
        self, conversation_id: str, chat_session_id: Optional[str] = None
    ) -> Optional[Handoff]:
        handoff = self._by_conversation.get(conversation_id)
        if handoff is None:
            return None
        if chat_session_id is not None and handoff.chat_session_id != chat_session_id:
            return None
        del self._by_conversation[conversation_id]
        self._by_chat.pop(handoff.chat_session_id, None)
        self._drop_lease(conversation_id)
        self._fences.pop(conversation_id, None)
        return handoff

    async def all(self) -> List[Handoff]:
        return list(self._by_conversation.values())
