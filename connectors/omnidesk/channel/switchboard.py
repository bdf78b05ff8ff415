"""The switchboard: which conversation is with an agent right now.

Read on every customer turn, so every operation is O(1) and never touches the
tracker. Two implementations share one async interface, modeled on Rasa's lock
store: ``InMemorySwitchboard`` for a single process and ``RedisSwitchboard``
for several Rasa instances and for handoffs that survive a restart. Each
mutation that two callers may race on (taking the next messageNumber, ending a
handoff, sending the wait notice once) is atomic in both.

Order to Omnidesk: a customer turn is sent under the chat's *turn lease*
(``begin_turn``): one sender per chat at a time, whichever instance it runs
on. Taking the lease also numbers the turn and records the activity, in one
step (one Lua script, one round trip in Redis). The lease expires on its own
after ``lease_seconds``, so a crashed holder blocks nobody for longer; each
grant carries a fence (a counter per handoff), and ``finish_turn`` with a
fence that is no longer the holder's reports that the lease was lost.

Nothing here imports rasa or sanic.
"""

import abc
import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

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
                agent_name=_optional_text(data.get("agent_name")),
                agent_picture=_optional_text(data.get("agent_picture")),
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


def _optional_text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def new_handoff(
    conversation_id: str,
    chat_session_id: str,
    channel: str,
    next_message_number: int,
    now: Optional[float] = None,
) -> Handoff:
    at = time.time() if now is None else now
    return Handoff(
        conversation_id=conversation_id,
        chat_session_id=chat_session_id,
        channel=channel,
        next_message_number=next_message_number,
        started_at=at,
        last_activity=at,
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
    async def take_message_number(self, conversation_id: str) -> Optional[int]:
        """Atomically return the next messageNumber and count it up (None: not in relay)."""

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

    async def find_by_chat_session(self, chat_session_id: str) -> Optional[Handoff]:
        conversation_id = self._by_chat.get(chat_session_id)
        if conversation_id is None:
            return None
        return self._by_conversation.get(conversation_id)

    async def take_message_number(self, conversation_id: str) -> Optional[int]:
        handoff = self._by_conversation.get(conversation_id)
        if handoff is None:
            return None
        number = handoff.next_message_number
        self._by_conversation[conversation_id] = replace(handoff, next_message_number=number + 1)
        return number

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


# Redis layout: one hash per handoff (field "h" the JSON, field "n" the next
# messageNumber as a counter HINCRBY can bump) and one key per chat id pointing
# back to the conversation, plus a set of open conversations for the sweeper.
# end_handoff ends the handoff at `key` (only if it is chat `only_chat`, when
# that is not ''), returns {json, next number} or false. Both scripts use it, so
# ending a handoff and starting one in its place are each one atomic step.
_END_FUNCTION = """
local function end_handoff(key, only_chat, chat_prefix, open_set, conversation)
  local raw = redis.call('HGET', key, 'h')
  if not raw then return false end
  local n = redis.call('HGET', key, 'n')
  local handoff = cjson.decode(raw)
  if only_chat ~= '' and handoff['chat_session_id'] ~= only_chat then return false end
  redis.call('DEL', key)
  redis.call('DEL', chat_prefix .. handoff['chat_session_id'])
  redis.call('SREM', open_set, conversation)
  return {raw, n}
end
"""

_END_SCRIPT = (
    _END_FUNCTION
    + """
return end_handoff(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""
)

# ARGV: chat prefix, open set, conversation, handoff JSON, next number, last
# activity, chat id.
_START_SCRIPT = (
    _END_FUNCTION
    + """
local previous = end_handoff(KEYS[1], '', ARGV[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[1], 'h', ARGV[4], 'n', ARGV[5], 'l', ARGV[6])
redis.call('SET', ARGV[1] .. ARGV[7], ARGV[3])
redis.call('SADD', ARGV[2], ARGV[3])
return previous
"""
)

_TAKE_NUMBER_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('HINCRBY', KEYS[1], 'n', 1) - 1
"""

# The turn lease lives in the handoff's hash ('lf' the holder's fence, 'lx' its
# expiry in ms on Redis's clock), so it goes with the handoff when that ends or
# is replaced. KEYS[1] the handoff; ARGV: lease in ms, the time of the turn.
# Returns false (not in relay), or {json, n, w, a, l, number, fence, an} where
# number and fence are false when another sender holds the lease.
_BEGIN_TURN_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local v = redis.call('HMGET', KEYS[1], 'h', 'n', 'w', 'a', 'l', 'lx', 'an')
if not v[1] then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if v[6] and tonumber(v[6]) > now then
  return {v[1], v[2], v[3], v[4], v[5], false, false, v[7]}
end
local fence = redis.call('HINCRBY', KEYS[1], 'f', 1)
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HSET', KEYS[1], 'lf', fence, 'lx', now + tonumber(ARGV[1]), 'l', ARGV[2])
return {v[1], tostring(n), v[3], v[4], ARGV[2], tostring(n - 1), tostring(fence), v[7]}
"""

# 1: released (or the handoff is gone, lease and all); 0: the lease is someone else's.
_FINISH_TURN_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
local holder = redis.call('HGET', KEYS[1], 'lf')
if holder ~= ARGV[1] then
  if not holder and redis.call('HGET', KEYS[1], 'f') == ARGV[1] then return 1 end
  return 0
end
redis.call('HDEL', KEYS[1], 'lf', 'lx')
return 1
"""

# The sweeper lease: taken when free, renewed by its holder. ARGV: holder, ms.
_SWEEPER_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_CLAIM_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], 'w', '1')
"""


class RedisSwitchboard(Switchboard):
    """Handoffs in Redis: shared by every Rasa instance, kept across restarts."""

    def __init__(self, url: str, prefix: str = "omnidesk:", timeout: float = 5.0) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        self._prefix = prefix
        self._end = self._redis.register_script(_END_SCRIPT)
        self._start = self._redis.register_script(_START_SCRIPT)
        self._take = self._redis.register_script(_TAKE_NUMBER_SCRIPT)
        self._claim = self._redis.register_script(_CLAIM_SCRIPT)
        self._begin_turn = self._redis.register_script(_BEGIN_TURN_SCRIPT)
        self._finish_turn = self._redis.register_script(_FINISH_TURN_SCRIPT)
        self._sweeper = self._redis.register_script(_SWEEPER_SCRIPT)

    def _key(self, conversation_id: str) -> str:
        return f"{self._prefix}handoff:{conversation_id}"

    def _chat_prefix(self) -> str:
        return f"{self._prefix}chat:"

    def _open_set(self) -> str:
        return f"{self._prefix}open"

    @property
    def redis(self) -> Any:
        """The connection, for state kept beside the handoffs (record.py)."""
        return self._redis

    @property
    def prefix(self) -> str:
        return self._prefix

    async def call(self, what: str, coroutine: Any) -> Any:
        """Await a Redis call; a failure becomes a SwitchboardError that says what failed."""
        return await self._call(what, coroutine)

    async def _call(self, what: str, coroutine: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await coroutine
        except (RedisError, OSError, asyncio.TimeoutError) as error:
            raise SwitchboardError(
                f"switchboard {what} failed: {type(error).__name__}: {error}; "
                "check that Redis at OMNIDESK_SWITCHBOARD_URL is reachable"
            ) from error

    async def _read(self, key: str) -> Optional[Handoff]:
        values = await self._call("read", self._redis.hmget(key, "h", "n", "w", "a", "l", "an"))
        return _from_fields(*values)

    async def begin_turn(
        self, conversation_id: str, lease_seconds: float, now: Optional[float] = None
    ) -> Optional[TurnTicket]:
        at = time.time() if now is None else now
        answer = await self._call(
            "begin_turn",
            self._begin_turn(
                keys=[self._key(conversation_id)], args=[int(lease_seconds * 1000), at]
            ),
        )
        if not answer:
            return None
        raw, number, wait, agent_at, last_at, taken, fence, agent = answer
        handoff = _from_fields(raw, number, wait, agent_at, last_at, agent)
        assert handoff is not None
        if taken is None:
            return TurnTicket(handoff)
        return TurnTicket(handoff, int(taken), int(fence))

    async def finish_turn(self, conversation_id: str, fence: int) -> bool:
        released = await self._call(
            "finish_turn", self._finish_turn(keys=[self._key(conversation_id)], args=[fence])
        )
        return bool(int(released))

    async def start(self, handoff: Handoff) -> Optional[Handoff]:
        replaced = await self._call(
            "start",
            self._start(
                keys=[self._key(handoff.conversation_id)],
                args=[
                    self._chat_prefix(),
                    self._open_set(),
                    handoff.conversation_id,
                    handoff.to_json(),
                    handoff.next_message_number,
                    handoff.last_activity,
                    handoff.chat_session_id,
                ],
            ),
        )
        return _ended_handoff(replaced)

    async def get(self, conversation_id: str) -> Optional[Handoff]:
        return await self._read(self._key(conversation_id))

    async def find_by_chat_session(self, chat_session_id: str) -> Optional[Handoff]:
        conversation_id = await self._call(
            "lookup", self._redis.get(self._chat_prefix() + chat_session_id)
        )
        if conversation_id is None:
            return None
        handoff = await self.get(str(conversation_id))
        if handoff is None or handoff.chat_session_id != chat_session_id:
            return None
        return handoff

    async def take_message_number(self, conversation_id: str) -> Optional[int]:
        number = await self._call(
            "take_message_number", self._take(keys=[self._key(conversation_id)])
        )
        return None if number is None else int(number)

    async def touch(
        self,
        conversation_id: str,
        *,
        agent: bool = False,
        now: Optional[float] = None,
        agent_name: Optional[str] = None,
        agent_picture: Optional[str] = None,
    ) -> None:
        at = time.time() if now is None else now
        key = self._key(conversation_id)
        mapping: Dict[str, Any] = {"l": at}
        if agent:
            mapping["a"] = at
        if agent_name is not None or agent_picture is not None:
            mapping["an"] = json.dumps([agent_name, agent_picture])
        # Only touch a handoff that exists: HSET on a missing key would revive it.
        script = (
            "if redis.call('EXISTS', KEYS[1]) == 1 then "
            "for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end end "
            "return 1"
        )
        args: List[Any] = []
        for field, value in mapping.items():
            args.extend([field, value])
        await self._call("touch", self._redis.eval(script, 1, key, *args))

    async def claim_wait_notice(self, conversation_id: str) -> bool:
        claimed = await self._call(
            "claim_wait_notice", self._claim(keys=[self._key(conversation_id)])
        )
        return bool(int(claimed))

    async def end(
        self, conversation_id: str, chat_session_id: Optional[str] = None
    ) -> Optional[Handoff]:
        ended = await self._call(
            "end",
            self._end(
                keys=[self._key(conversation_id)],
                args=[
                    chat_session_id or "",
                    self._chat_prefix(),
                    self._open_set(),
                    conversation_id,
                ],
            ),
        )
        return _ended_handoff(ended)

    async def all(self) -> List[Handoff]:
        members = await self._call("list", self._redis.smembers(self._open_set()))
        handoffs: List[Handoff] = []
        for conversation_id in sorted(members):
            try:
                handoff = await self.get(str(conversation_id))
            except UnreadableHandoff as error:
                # One damaged record must not hide every other handoff from the sweeper.
                logger.error("Skipped the handoff of conversation %s: %s", conversation_id, error)
                continue
            if handoff is not None:
                handoffs.append(handoff)
        return handoffs

    async def claim_sweeper(self, holder: str, lease_seconds: float) -> bool:
        claimed = await self._call(
            "claim_sweeper",
            self._sweeper(
                keys=[f"{self._prefix}sweeper"], args=[holder, int(lease_seconds * 1000)]
            ),
        )
        return bool(int(claimed))

    async def release_sweeper(self, holder: str) -> None:
        script = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end"
        await self._call(
            "release_sweeper", self._redis.eval(script, 1, f"{self._prefix}sweeper", holder)
        )

    async def close(self) -> None:
        await self._redis.close()


def create_switchboard(url: str) -> Switchboard:
    """The switchboard settings.switchboard_url names: ``memory://`` or ``redis://...``."""
    if url.startswith("memory://") or url in {"", "memory"}:
        return InMemorySwitchboard()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisSwitchboard(url)
    raise SwitchboardError(
        "switchboard_url must be memory:// or a Redis URL such as redis://localhost:6379/0"
    )


def _from_fields(
    raw: Any, number: Any, wait: Any, agent_at: Any, last_at: Any, agent: Any = None
) -> Optional[Handoff]:
    """A handoff from its hash fields: the JSON, then the counters kept beside it."""
    if raw is None:
        return None
    handoff = Handoff.from_json(raw)
    if agent is not None:
        try:
            name, picture = json.loads(agent)
        except (ValueError, TypeError) as error:
            raise UnreadableHandoff(f"a stored agent could not be read ({error})") from error
        handoff = replace(
            handoff, agent_name=_optional_text(name), agent_picture=_optional_text(picture)
        )
    return replace(
        handoff,
        next_message_number=int(number) if number is not None else 1,
        wait_notice_sent=wait is not None,
        last_agent_activity=float(agent_at) if agent_at is not None else None,
        last_activity=float(last_at) if last_at is not None else handoff.last_activity,
    )


def _ended_handoff(ended: Any) -> Optional[Handoff]:
    """The handoff end_handoff returned ({json, next number}), or None for false."""
    if not ended:
        return None
    raw, number = ended
    handoff = Handoff.from_json(raw)
    return replace(handoff, next_message_number=int(number) if number is not None else 1)
