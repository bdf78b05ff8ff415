"""The switchboard in Redis: shared by every Rasa instance, and it survives a restart.

Every key of one conversation carries the same hash tag
(``handoff.conversation_tag``: eight hex digits of a digest of the conversation id), so each script touches one
hash slot and runs on a Redis Cluster as on one server. The chat ids the action
opens carry that tag too (handoff.new_chat_session_id), so a chat's lookup key
sits in its conversation's slot. The few keys that span conversations (the
open set the sweeper lists, the waiting tracker records, the sweeper's lease)
are touched by commands of their own, beside the scripts, never inside them.

Each mutation two callers may race on is one Lua script: taking a place in a
conversation's line (which, when the place is first, also reads the handoff
and numbers the turn: one round trip before the Omnidesk call), leaving it
(with the relayed turn kept for the tracker: one round trip after), ending a
handoff (exactly one of two racing ends wins), starting one in place of
another, claiming the one-time wait notice. switchboard.py has the interface
and the in-memory twin; ``create_switchboard`` picks one of the two by the
``switchboard_url`` setting.
"""

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import replace
from typing import Any, AsyncIterator, Dict, List, Optional, Set

from connectors.omnidesk import metrics
from connectors.omnidesk.channel.switchboard import (
    LINE_LEASE,
    Handoff,
    InMemorySwitchboard,
    Place,
    RecordBuffer,
    Switchboard,
    SwitchboardError,
    UnreadableHandoff,
    optional_number,
    optional_text,
)
from connectors.omnidesk.handoff import conversation_tag, tag_of_chat

logger = logging.getLogger(__name__)

# The handoff's hash: "h" its JSON; beside it the fields scripts change: "n" the
# next messageNumber, "w" the wait notice claimed, "a" the agent's last activity,
# "l" the last activity, "an" the agent's name and picture (JSON), "e" the
# outcome of an end Omnidesk has not heard of yet, "ea" when it ended.
_FIELDS = ("h", "n", "w", "a", "l", "an", "e", "ea")

# A conversation's line: KEYS[1] the list of places (tickets, oldest first),
# KEYS[2] a hash ticket -> until when it counts (ms, Redis's clock), KEYS[3] the
# handoff. Places whose holder stopped renewing are dropped from the front.
_LINE_FUNCTIONS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function head_alive(line, untils, now)
  while true do
    local head = redis.call('LINDEX', line, 0)
    if not head then return false end
    local untl = redis.call('HGET', untils, head)
    if untl and tonumber(untl) > now then return head end
    redis.call('LPOP', line)
    redis.call('HDEL', untils, head)
  end
end
local function served(handoff_key, numbered, at, untils, ticket)
  local v = redis.call('HMGET', handoff_key, 'h', 'n', 'w', 'a', 'l', 'an', 'e', 'ea')
  if (not v[1]) or v[7] or numbered ~= '1' then return {1, v} end
  -- A place asked again after a lost reply keeps the number it was given.
  local given = redis.call('HGET', untils, 's:' .. ticket)
  if given then return {1, v, given} end
  local n = redis.call('HINCRBY', handoff_key, 'n', 1)
  redis.call('HSET', handoff_key, 'l', at)
  redis.call('HSET', untils, 's:' .. ticket, tostring(n - 1))
  v[2] = tostring(n)
  v[5] = at
  return {1, v, tostring(n - 1)}
end
"""

# ARGV: ticket, lease ms, numbered ('1'/'0'), the time of the turn. Returns {0}
# (not first yet) or {1, fields, number}.
_ARRIVE_SCRIPT = (
    _LINE_FUNCTIONS
    + """
if redis.replicate_commands then redis.replicate_commands() end
local now = now_ms()
local lease = tonumber(ARGV[2])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], now + lease)
redis.call('PEXPIRE', KEYS[1], lease * 4)
redis.call('PEXPIRE', KEYS[2], lease * 4)
if head_alive(KEYS[1], KEYS[2], now) ~= ARGV[1] then return {0} end
return served(KEYS[3], ARGV[3], ARGV[4], KEYS[2], ARGV[1])
"""
)

# Renew this place and look again: the same answers as arriving. A place that
# was dropped (its holder stalled past the lease) stands in line again at the back.
_CHECK_SCRIPT = (
    _LINE_FUNCTIONS
    + """
if redis.replicate_commands then redis.replicate_commands() end
local now = now_ms()
local lease = tonumber(ARGV[2])
if not redis.call('HGET', KEYS[2], ARGV[1]) then
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
redis.call('HSET', KEYS[2], ARGV[1], now + lease)
redis.call('PEXPIRE', KEYS[1], lease * 4)
redis.call('PEXPIRE', KEYS[2], lease * 4)
if head_alive(KEYS[1], KEYS[2], now) ~= ARGV[1] then return {0} end
return served(KEYS[3], ARGV[3], ARGV[4], KEYS[2], ARGV[1])
"""
)

# The holder renews its place while it is served. ARGV: ticket, lease ms.
_RENEW_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('HGET', KEYS[2], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], now + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 4)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 4)
return 1
"""

# Leave the line, keep the relayed turns for the tracker, wake the next place.
# KEYS: line, untils, record list; ARGV: ticket, wake channel, conversation,
# record ttl (s), then the entries. Returns how many entries waited before.
_LEAVE_SCRIPT = """
redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1], 's:' .. ARGV[1])
local before = 0
if #ARGV > 4 then
  before = redis.call('LLEN', KEYS[3])
  for i = 5, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
end
if redis.call('LLEN', KEYS[1]) > 0 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return before
"""

# Start a handoff in place of whatever the conversation had. KEYS[1] the
# handoff; ARGV: JSON, next number, last activity. Returns the replaced fields.
_START_SCRIPT = """
local previous = redis.call('HMGET', KEYS[1], 'h', 'n', 'w', 'a', 'l', 'an', 'e', 'ea')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'h', ARGV[1], 'n', ARGV[2], 'l', ARGV[3])
if previous[1] then return previous end
return false
"""

# End an open handoff (only chat ARGV[1] when not ''). ARGV[2]: the outcome when
# Omnidesk is still to hear of the end (the handoff stays, marked), '' to forget
# it at once; ARGV[3] the time. Returns the fields as they were, or false.
_END_SCRIPT = """
local v = redis.call('HMGET', KEYS[1], 'h', 'n', 'w', 'a', 'l', 'an', 'e', 'ea')
if (not v[1]) or v[7] then return false end
if ARGV[1] ~= '' and cjson.decode(v[1])['chat_session_id'] ~= ARGV[1] then return false end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'e', ARGV[2], 'ea', ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return v
"""

# Omnidesk heard of the end of chat ARGV[1]: forget the ending handoff. 1 if it did.
_TOLD_SCRIPT = """
local raw = redis.call('HGET', KEYS[1], 'h')
if (not raw) or (not redis.call('HGET', KEYS[1], 'e')) then return 0 end
if cjson.decode(raw)['chat_session_id'] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# Record activity on an open handoff only: HSET on a missing key would revive it.
_TOUCH_SCRIPT = """
if redis.call('HGET', KEYS[1], 'h') and not redis.call('HGET', KEYS[1], 'e') then
  for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""

_CLAIM_SCRIPT = """
if (not redis.call('HGET', KEYS[1], 'h')) or redis.call('HGET', KEYS[1], 'e') then return 0 end
return redis.call('HSETNX', KEYS[1], 'w', '1')
"""

# The sweeper lease: taken when free, renewed by its holder. ARGV: holder, ms.
_SWEEPER_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# -- the tracker records ----------------------------------------------------------------

# Drop the written entries. Returns how many are left.
_DROP_SCRIPT = """
redis.call('LTRIM', KEYS[1], tonumber(ARGV[1]), -1)
return redis.call('LLEN', KEYS[1])
"""

_UNLOCK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

FLUSH_LEASE = 60.0  # seconds one instance may spend writing one conversation's turns
RECORD_TTL = 7 * 24 * 3600  # seconds waiting tracker entries are kept at most


class RedisKeys:
    """Every key name of the Redis state, in one place (docs/architecture.md, "Where state lives")."""

    def __init__(self, prefix: str = "omnidesk:") -> None:
        self.prefix = prefix

    def of(self, conversation_id: str, what: str) -> str:
        """A key of one conversation, in its hash slot."""
        return f"{self.prefix}{{{conversation_tag(conversation_id)}}}:{what}:{conversation_id}"

    def chat(self, chat_session_id: str) -> str:
        """A chat's lookup key: in its conversation's slot when the id carries the tag."""
        tag = tag_of_chat(chat_session_id) or conversation_tag(chat_session_id)
        return f"{self.prefix}{{{tag}}}:chat:{chat_session_id}"

    def handoff(self, conversation_id: str) -> str:
        return self.of(conversation_id, "handoff")

    @property
    def open(self) -> str:
        return f"{self.prefix}open"

    @property
    def sweeper(self) -> str:
        return f"{self.prefix}sweeper"

    @property
    def line_wake(self) -> str:
        return f"{self.prefix}line:wake"

    @property
    def record_due(self) -> str:
        return f"{self.prefix}record:due"


class RedisRecordBuffer(RecordBuffer):
    """Relayed turns waiting for the tracker, in Redis beside the handoffs.

    A list per conversation (``record:<conversation>``, in its slot) and one
    sorted set of the conversations with entries, scored by when their oldest
    entry came (``record:due``, kept by commands of its own).
    """

    def __init__(self, board: "RedisSwitchboard") -> None:
        self._board = board
        redis = board.redis
        self._redis: Any = redis
        self._drop = redis.register_script(_DROP_SCRIPT)
        self._unlock = redis.register_script(_UNLOCK_SCRIPT)

    def _list(self, conversation_id: str) -> str:
        return self._board.keys.of(conversation_id, "record")

    def _lock_key(self, conversation_id: str) -> str:
        return self._board.keys.of(conversation_id, "record-lock")

    async def add(self, conversation_id: str, raw: str) -> None:
        key = self._list(conversation_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.rpush(key, raw)
        pipe.expire(key, RECORD_TTL)
        pipe.zadd(self._board.keys.record_due, {conversation_id: time.time()}, nx=True)
        await self._board.call("record", pipe.execute())

    async def noted(self, conversation_id: str, waited_before: int) -> None:
        """Entries were kept by another step: mark the conversation due if they are its first."""
        if waited_before == 0:
            await self._board.call(
                "record",
                self._redis.zadd(
                    self._board.keys.record_due, {conversation_id: time.time()}, nx=True
                ),
            )

    async def peek(self, conversation_id: str) -> List[str]:
        raws = await self._board.call(
            "record read", self._redis.lrange(self._list(conversation_id), 0, -1)
        )
        return [str(raw) for raw in raws]

    async def drop(self, conversation_id: str, count: int) -> None:
        left = await self._board.call(
            "record drop", self._drop(keys=[self._list(conversation_id)], args=[count])
        )
        due = self._board.keys.record_due
        if int(left) == 0:
            await self._board.call("record drop", self._redis.zrem(due, conversation_id))
        else:
            # Due again from now: what is left came after the write began.
            await self._board.call(
                "record drop", self._redis.zadd(due, {conversation_id: time.time()})
            )

    async def due(self, older_than: Optional[float]) -> List[str]:
        top = "+inf" if older_than is None else time.time() - older_than
        members = await self._board.call(
            "record due", self._redis.zrangebyscore(self._board.keys.record_due, "-inf", top)
        )
        return [str(member) for member in members]

    async def lock(self, conversation_id: str) -> Optional[str]:
        token = uuid.uuid4().hex
        taken = await self._board.call(
            "record lock",
            self._redis.set(
                self._lock_key(conversation_id), token, nx=True, px=int(FLUSH_LEASE * 1000)
            ),
        )
        return token if taken else None

    async def unlock(self, conversation_id: str, token: str) -> None:
        await self._board.call(
            "record unlock",
            self._unlock(keys=[self._lock_key(conversation_id)], args=[token]),
        )


class _Wakes:
    """Hears the line's wake-ups (one pub/sub channel) and wakes this process's waiters."""

    def __init__(self, board: "RedisSwitchboard") -> None:
        self._board = board
        self._events: Dict[str, asyncio.Event] = {}
        self._waiting: Dict[str, int] = {}
        self._listening: Optional[asyncio.Task[None]] = None

    def arm(self, conversation_id: str) -> asyncio.Event:
        """An event the next wake-up of ``conversation_id`` sets; arm it before looking."""
        if self._listening is None or self._listening.done():
            self._listening = asyncio.ensure_future(self._listen())
        event = self._events.get(conversation_id)
        if event is None:
            event = self._events[conversation_id] = asyncio.Event()
        event.clear()
        return event

    def enter(self, conversation_id: str) -> None:
        self._waiting[conversation_id] = self._waiting.get(conversation_id, 0) + 1

    def leave(self, conversation_id: str) -> None:
        left = self._waiting.get(conversation_id, 1) - 1
        if left <= 0:
            self._waiting.pop(conversation_id, None)
            self._events.pop(conversation_id, None)
        else:
            self._waiting[conversation_id] = left

    async def _listen(self) -> None:
        failing = False
        while True:
            pubsub = self._board.listener.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._board.keys.line_wake)
                if failing:
                    logger.info("Line wake-ups heard again.")
                    failing = False
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    event = self._events.get(str(message.get("data")))
                    if event is not None:
                        event.set()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not failing:
                    logger.error(
                        "Line wake-ups not heard (places look again every %.0f s): %s: %s",
                        LINE_LEASE / 3,
                        type(error).__name__,
                        error,
                    )
                failing = True
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.close()

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
            self._listening = None


class RedisSwitchboard(Switchboard):
    """Handoffs in Redis: shared by every Rasa instance, kept across restarts."""

    records: RedisRecordBuffer

    def __init__(
        self,
        url: str,
        prefix: str = "omnidesk:",
        timeout: float = 5.0,
        line_lease: float = LINE_LEASE,
    ) -> None:
        import redis.asyncio as aioredis

        self.line_lease = line_lease
        self._redis: Any = aioredis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        # Wake-ups arrive whenever a place is left: a quiet minute is no timeout there.
        self.listener: Any = aioredis.from_url(
            url,
            decode_responses=True,
            socket_timeout=None,
            socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        self.keys = RedisKeys(prefix)
        self._arrive = self._redis.register_script(_ARRIVE_SCRIPT)
        self._check = self._redis.register_script(_CHECK_SCRIPT)
        self._renew = self._redis.register_script(_RENEW_SCRIPT)
        self._leave = self._redis.register_script(_LEAVE_SCRIPT)
        self._start = self._redis.register_script(_START_SCRIPT)
        self._end = self._redis.register_script(_END_SCRIPT)
        self._told = self._redis.register_script(_TOLD_SCRIPT)
        self._touch = self._redis.register_script(_TOUCH_SCRIPT)
        self._claim = self._redis.register_script(_CLAIM_SCRIPT)
        self._sweeper = self._redis.register_script(_SWEEPER_SCRIPT)
        self._release = self._redis.register_script(_RELEASE_SCRIPT)
        self._wakes = _Wakes(self)
        self.records = RedisRecordBuffer(self)
        self._holding: Set[asyncio.Task[None]] = set()

    @property
    def redis(self) -> Any:
        """The connection, for state kept beside the handoffs."""
        return self._redis

    @property
    def prefix(self) -> str:
        return self.keys.prefix

    async def call(self, what: str, coroutine: Any) -> Any:
        """Await a Redis call; a failure becomes a SwitchboardError that says what failed."""
        from redis.exceptions import RedisError

        try:
            return await coroutine
        except (RedisError, OSError, asyncio.TimeoutError) as error:
            metrics.switchboard_error(what)
            raise SwitchboardError(
                f"switchboard {what} failed: {type(error).__name__}: {error}; "
                "check that Redis at OMNIDESK_SWITCHBOARD_URL is reachable"
            ) from error

    async def _read(self, conversation_id: str) -> Optional[Handoff]:
        values = await self.call(
            "read", self._redis.hmget(self.keys.handoff(conversation_id), *_FIELDS)
        )
        return _from_fields(values)

    # -- the line ---------------------------------------------------------------------

    def _line_keys(self, conversation_id: str) -> List[str]:
        return [
            self.keys.of(conversation_id, "line"),
            self.keys.of(conversation_id, "line-until"),
            self.keys.handoff(conversation_id),
        ]

    def _served(self, conversation_id: str, answer: Any, place: Place) -> Place:
        if not answer or int(answer[0]) != 1:
            return place
        place.first = True
        place.handoff = _from_fields(answer[1])
        if place.handoff is not None and len(answer) > 2:
            place.message_number = int(answer[2])
        return place

    async def _take(self, place: Place, script: Any, numbered: bool) -> Place:
        """Arrive or look again; a reply lost after the script ran is resolved by reading back."""
        args: List[Any] = [
            place.ticket,
            int(self.line_lease * 1000),
            "1" if numbered else "0",
            time.time(),
        ]
        keys = self._line_keys(place.conversation_id)
        try:
            answer = await self.call("line", script(keys=keys, args=args))
        except SwitchboardError as error:
            if not reply_lost(error):
                raise
            # The script may have run: ask again with the same ticket. The check
            # script stands it in line only if it is not there yet, and gives a
            # served place the number it was given.
            answer = await self.call("line", self._check(keys=keys, args=args))
        return self._served(place.conversation_id, answer, place)

    @contextlib.asynccontextmanager
    async def in_line(
        self, conversation_id: str, numbered: bool, wait: float
    ) -> AsyncIterator[Place]:
        deadline = time.monotonic() + wait
        place = Place(conversation_id, first=False)
        self._wakes.enter(conversation_id)
        entered = False
        keeper: Optional[asyncio.Task[None]] = None
        try:
            woken = self._wakes.arm(conversation_id)
            place = await self._take(place, self._arrive, numbered)
            entered = True
            while not place.first:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # Woken by the place ahead when it leaves; looked at again every
                # third of the lease anyway, for a holder that died.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(remaining, self.line_lease / 3))
                woken = self._wakes.arm(conversation_id)
                place = await self._take(place, self._check, numbered)
            if place.first:
                keeper = asyncio.ensure_future(self._keep_place(place))
            yield place
        finally:
            self._wakes.leave(conversation_id)
            if keeper is not None:
                keeper.cancel()
            if entered:
                await self._give_up(place)

    async def _keep_place(self, place: Place) -> None:
        """Renew a place while its turn is served, so a long turn keeps the line."""
        keys = self._line_keys(place.conversation_id)[:2]
        while True:
            await asyncio.sleep(self.line_lease / 3)
            try:
                await self.call(
                    "line", self._renew(keys=keys, args=[place.ticket, int(self.line_lease * 1000)])
                )
            except SwitchboardError as error:
                logger.warning(
                    "Could not renew the place of a turn of conversation %s: %s",
                    place.conversation_id,
                    error,
                )

    async def _give_up(self, place: Place) -> None:
        """Leave the line and keep the relayed turns; shielded, so a cancelled turn still leaves."""
        conversation_id = place.conversation_id
        keys = [*self._line_keys(conversation_id)[:2], self.keys.of(conversation_id, "record")]
        args: List[Any] = [place.ticket, self.keys.line_wake, conversation_id, RECORD_TTL]
        args.extend(place.kept)
        leaving = asyncio.ensure_future(self.call("line", self._leave(keys=keys, args=args)))
        try:
            before = await asyncio.shield(leaving)
            if place.kept:
                await self.records.noted(conversation_id, int(before))
        except SwitchboardError as error:
            # The place lapses on its own within the lease; turns kept here are lost
            # to the tracker (they did reach the agent), so say so.
            logger.error(
                "Could not leave the line of conversation %s%s: %s",
                conversation_id,
                f" nor keep {len(place.kept)} relayed turns for its tracker" if place.kept else "",
                error,
            )

    # -- handoffs -------------------------------------------------------------------------

    async def start(self, handoff: Handoff) -> Optional[Handoff]:
        pipe = self._redis.pipeline(transaction=False)
        # The chat's lookup first: a lookup of a chat whose handoff is not there
        # yet finds nothing (it is checked against the handoff), never a wrong one.
        pipe.set(self.keys.chat(handoff.chat_session_id), handoff.conversation_id)
        pipe.sadd(self.keys.open, handoff.conversation_id)
        await self._start(
            keys=[self.keys.handoff(handoff.conversation_id)],
            args=[handoff.to_json(), handoff.next_message_number, handoff.last_activity],
            client=pipe,
        )
        results = await self.call("start", pipe.execute())
        replaced = _from_fields(results[-1], including_ending=True) if results[-1] else None
        if replaced is not None and replaced.chat_session_id != handoff.chat_session_id:
            await self.call("start", self._redis.delete(self.keys.chat(replaced.chat_session_id)))
        return replaced

    async def get(self, conversation_id: str) -> Optional[Handoff]:
        return await self._read(conversation_id)

    async def find_by_chat_session(self, chat_session_id: str) -> Optional[Handoff]:
        conversation_id = await self.call(
            "lookup", self._redis.get(self.keys.chat(chat_session_id))
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
        args: List[Any] = ["l", at]
        if agent:
            args.extend(["a", at])
        if agent_name is not None or agent_picture is not None:
            args.extend(["an", json.dumps([agent_name, agent_picture])])
        await self.call("touch", self._touch(keys=[self.keys.handoff(conversation_id)], args=args))

    async def claim_wait_notice(self, conversation_id: str) -> bool:
        claimed = await self.call(
            "claim_wait_notice", self._claim(keys=[self.keys.handoff(conversation_id)])
        )
        return bool(int(claimed))

    async def end(
        self,
        conversation_id: str,
        chat_session_id: Optional[str] = None,
        tell_omnidesk: Optional[str] = None,
    ) -> Optional[Handoff]:
        ended = await self.call(
            "end",
            self._end(
                keys=[self.keys.handoff(conversation_id)],
                args=[chat_session_id or "", tell_omnidesk or "", time.time()],
            ),
        )
        handoff = _from_fields(ended) if ended else None
        if handoff is not None and tell_omnidesk is None:
            await self._forget(handoff)
        return handoff

    async def told_omnidesk(self, conversation_id: str, chat_session_id: str) -> None:
        forgotten = await self.call(
            "told",
            self._told(keys=[self.keys.handoff(conversation_id)], args=[chat_session_id]),
        )
        if int(forgotten):
            pipe = self._redis.pipeline(transaction=False)
            pipe.delete(self.keys.chat(chat_session_id))
            pipe.srem(self.keys.open, conversation_id)
            await self.call("told", pipe.execute())

    async def _forget(self, handoff: Handoff) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(self.keys.chat(handoff.chat_session_id))
        pipe.srem(self.keys.open, handoff.conversation_id)
        await self.call("end", pipe.execute())

    async def count_open(self) -> int:
        return int(await self.call("count", self._redis.scard(self.keys.open)))

    async def all(self) -> List[Handoff]:
        members = sorted(
            str(m) for m in await self.call("list", self._redis.smembers(self.keys.open))
        )
        if not members:
            return []
        # One round trip for every handoff: the sweeper must not hold up the loop
        # with one trip per chat.
        pipe = self._redis.pipeline(transaction=False)
        for conversation_id in members:
            pipe.hmget(self.keys.handoff(conversation_id), *_FIELDS)
        rows = await self.call("list", pipe.execute())
        handoffs: List[Handoff] = []
        gone: List[str] = []
        for conversation_id, values in zip(members, rows):
            try:
                handoff = _from_fields(values, including_ending=True)
            except UnreadableHandoff as error:
                # One damaged record must not hide every other handoff from the sweeper.
                logger.error("Skipped the handoff of conversation %s: %s", conversation_id, error)
                continue
            if handoff is None:
                gone.append(conversation_id)
            else:
                handoffs.append(handoff)
        if gone:
            # An index entry left by an instance that stopped between two steps.
            await self.call("list", self._redis.srem(self.keys.open, *gone))
        return handoffs

    async def claim_sweeper(self, holder: str, lease_seconds: float) -> bool:
        claimed = await self.call(
            "claim_sweeper",
            self._sweeper(keys=[self.keys.sweeper], args=[holder, int(lease_seconds * 1000)]),
        )
        return bool(int(claimed))

    async def release_sweeper(self, holder: str) -> None:
        await self.call("release_sweeper", self._release(keys=[self.keys.sweeper], args=[holder]))

    async def close(self) -> None:
        await self._wakes.close()
        await self._redis.close()
        await self.listener.close()


def reply_lost(error: SwitchboardError) -> bool:
    """Whether a call timed out after it was sent: the server may have done it."""
    from redis.exceptions import TimeoutError as RedisTimeout

    return isinstance(error.__cause__, (RedisTimeout, asyncio.TimeoutError))


def _from_fields(values: Any, including_ending: bool = False) -> Optional[Handoff]:
    """A handoff from its hash fields (``_FIELDS``): the JSON, then the fields kept beside it.

    None when there is none, or when it is ending and ``including_ending`` is false:
    an ending handoff routes nothing.
    """
    if not values or values[0] is None:
        return None
    raw, number, wait, agent_at, last_at, agent, ending, ended_at = list(values) + [None] * (
        8 - len(values)
    )
    if ending is not None and not including_ending:
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
        last_agent_activity=optional_number(agent_at),
        last_activity=float(last_at) if last_at is not None else handoff.last_activity,
        ending=optional_text(ending),
        ended_at=optional_number(ended_at),
    )


def create_switchboard(url: str) -> Switchboard:
    """The switchboard settings.switchboard_url names: ``memory://`` or ``redis://...``."""
    if url.startswith("memory://") or url in {"", "memory"}:
        return InMemorySwitchboard()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisSwitchboard(url)
    raise SwitchboardError(
        "switchboard_url must be memory:// or a Redis URL such as redis://localhost:6379/0"
    )
