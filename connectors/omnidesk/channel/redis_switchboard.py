"""The switchboard in Redis: shared by every Rasa instance, and it survives a restart.

Each mutation two callers may race on is one Lua script, so it is atomic
across instances: taking a chat's turn lease with its number and activity (one
round trip before the Omnidesk call), ending a handoff (exactly one of two
racing ends wins), starting one in place of another, claiming the one-time wait
notice and the sweeper's lease. The handoff is a hash per conversation: its
JSON, and beside it the counters the scripts change. switchboard.py has the
interface and the in-memory twin; ``create_switchboard`` here picks one of the
two by the ``switchboard_url`` setting.
"""

import asyncio
import json
import logging
import time
from dataclasses import replace
from typing import Any, Dict, List, Optional

from connectors.omnidesk import metrics
from connectors.omnidesk.channel.switchboard import (
    Handoff,
    InMemorySwitchboard,
    Switchboard,
    SwitchboardError,
    TurnTicket,
    UnreadableHandoff,
    optional_text,
)

logger = logging.getLogger(__name__)


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
            metrics.switchboard_error(what)
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

    async def count_open(self) -> int:
        return int(await self._call("count", self._redis.scard(self._open_set())))

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
            handoff, agent_name=optional_text(name), agent_picture=optional_text(picture)
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


def create_switchboard(url: str) -> Switchboard:
    """The switchboard settings.switchboard_url names: ``memory://`` or ``redis://...``."""
    if url.startswith("memory://") or url in {"", "memory"}:
        return InMemorySwitchboard()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisSwitchboard(url)
    raise SwitchboardError(
        "switchboard_url must be memory:// or a Redis URL such as redis://localhost:6379/0"
    )
