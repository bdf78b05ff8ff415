"""The switchboard in Redis: shared by every Rasa instance, and it survives a restart.

Every key of one conversation carries its hash tag (``handoff.conversation_tag``:
one of 64, a digest of the conversation id), and so do the indexes that list
conversations (the open handoffs, the outboxes with entries, the tracker records
waiting), kept per tag. So each script touches one hash slot and runs on a Redis
Cluster as on one server, while 64 slots share the load. The chat ids the action
opens carry their conversation's tag (handoff.new_chat_session_id), so a chat's
lookup key is in the same slot too. Only the sweeper's lease and the pub/sub
channels are global. The clients are the process's own, shared with the outbox
store (redis_clients.py): one server, the master a Sentinel group names, or a
Redis Cluster, from the ``redis`` or ``switchboard_url`` setting.

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
from typing import Any, AsyncIterator, Dict, List, Optional, Sequence, Set, Tuple, Union

from connectors.omnidesk import metrics
from connectors.omnidesk.channel.outbox_store import RedisOutboxStore, rows_of
from connectors.omnidesk.channel.redis_clients import RedisClients
from connectors.omnidesk.channel.switchboard import (
    LINE_LEASE,
    Accepted,
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
from connectors.omnidesk.handoff import all_tags, conversation_tag, tag_of_chat
from connectors.omnidesk.redis_connection import RedisConnection

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
# KEYS: line, untils, record list, the tag's record-due set; ARGV: ticket, wake
# channel, conversation, record ttl (s), the time, then the entries.
_LEAVE_SCRIPT = """
redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1], 's:' .. ARGV[1])
if #ARGV > 5 then
  for i = 6, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
  redis.call('ZADD', KEYS[4], 'NX', ARGV[5], ARGV[3])
end
if redis.call('LLEN', KEYS[1]) > 0 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return 1
"""

# A key of this conversation, in its slot, from the tag and prefix the script
# is given (a chat's lookup key names the conversation only once read).
_KEY_FUNCTION = """
local function key(prefix, tag, what, conv)
  return prefix .. '{' .. tag .. '}:' .. what .. ':' .. conv
end
"""

# Start a handoff in place of whatever the conversation had: the handoff, its
# chat's lookup key, the tag's open set, and the replaced chat's lookup key
# when it carries the same tag. KEYS: handoff, chat key, open set; ARGV: JSON,
# next number, last activity, conversation, prefix, tag. Returns the replaced
# fields, or false.
_START_SCRIPT = (
    _KEY_FUNCTION
    + """
local previous = redis.call('HMGET', KEYS[1], 'h', 'n', 'w', 'a', 'l', 'an', 'e', 'ea')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'h', ARGV[1], 'n', ARGV[2], 'l', ARGV[3])
redis.call('SET', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[4])
if previous[1] then
  local old = cjson.decode(previous[1])['chat_session_id']
  local old_key = key(ARGV[5], ARGV[6], 'chat', old)
  if old_key ~= KEYS[2] and string.match(old, '^rasa%-(%x%x)%-') == ARGV[6] then
    redis.call('DEL', old_key)
  end
  return previous
end
return false
"""
)

# End an open handoff (only chat ARGV[1] when not ''). ARGV[2]: the outcome when
# Omnidesk is still to hear of the end (the handoff stays, marked), '' to forget
# it at once (its chat's lookup key and its place in the open set with it);
# ARGV[3] the time; ARGV[4..6] conversation, prefix, tag. KEYS: handoff, open
# set. Returns the fields as they were, or false.
_END_SCRIPT = (
    _KEY_FUNCTION
    + """
local v = redis.call('HMGET', KEYS[1], 'h', 'n', 'w', 'a', 'l', 'an', 'e', 'ea')
if (not v[1]) or v[7] then return false end
local chat = cjson.decode(v[1])['chat_session_id']
if ARGV[1] ~= '' and chat ~= ARGV[1] then return false end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'e', ARGV[2], 'ea', ARGV[3])
else
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[4])
  if string.match(chat, '^rasa%-(%x%x)%-') == ARGV[6] then
    redis.call('DEL', key(ARGV[5], ARGV[6], 'chat', chat))
  end
end
return v
"""
)

# Omnidesk heard of the end of chat ARGV[1]: forget the ending handoff. KEYS:
# handoff, open set; ARGV: chat, conversation, prefix, tag. 1 if it did.
_TOLD_SCRIPT = (
    _KEY_FUNCTION
    + """
local raw = redis.call('HGET', KEYS[1], 'h')
if (not raw) or (not redis.call('HGET', KEYS[1], 'e')) then return 0 end
if cjson.decode(raw)['chat_session_id'] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
if string.match(ARGV[1], '^rasa%-(%x%x)%-') == ARGV[4] then
  redis.call('DEL', key(ARGV[3], ARGV[4], 'chat', ARGV[1]))
end
return 1
"""
)

# An agent's message, file or typing into the customer's outbox, in one step:
# find the chat's open handoff (KEYS[1] its lookup key, or, with ARGV[3] the
# conversation, its handoff), append the entry (its channel and route taken
# from the handoff), note the outbox waiting, record activity and the agent,
# keep the message for the tracker, take the drainer lease when it is free,
# nudge every instance. ARGV: prefix, tag, conversation or '', chat, item JSON,
# time, tracker entry or '', activity ('1' agent, '0' other, '-' none), agent
# JSON or '', '1' to fill the item's agent from the handoff's, lease token or
# '', lease ms, stream ttl s, record ttl s, nudge channel, mark, the channels
# the caller can send on (',a,b,'; the lease is taken only for those). Returns
# false (no open chat) or {fields, conversation, entry id, leased, head}.
_ACCEPT_SCRIPT = (
    _KEY_FUNCTION
    + """
local prefix, tag, conv = ARGV[1], ARGV[2], ARGV[3]
if conv == '' then
  conv = redis.call('GET', KEYS[1])
  if not conv then return false end
end
local hk = key(prefix, tag, 'handoff', conv)
local v = redis.call('HMGET', hk, 'h', 'n', 'w', 'a', 'l', 'an', 'e', 'ea')
-- Not here: a chat id made without its conversation's tag points elsewhere.
if not v[1] then return {0, conv} end
if v[7] then return false end
local h = cjson.decode(v[1])
if h['chat_session_id'] ~= ARGV[4] then return false end
local item = ARGV[5]
if ARGV[10] == '1' and v[6] then
  local it = cjson.decode(item)
  local agent = cjson.decode(v[6])
  it['agent'] = {name = agent[1], picture = agent[2]}
  item = cjson.encode(it)
end
local route = ''
if h['route'] ~= nil and h['route'] ~= cjson.null then route = cjson.encode(h['route']) end
local stream = key(prefix, tag, 'outbox', conv)
local id = redis.call('XADD', stream, '*', 'e', item, 'c', conv, 'ch', h['channel'],
  'chat', ARGV[4], 'at', ARGV[6], 'r', route, 'u', ARGV[16])
redis.call('EXPIRE', stream, tonumber(ARGV[13]))
redis.call('SADD', prefix .. '{' .. tag .. '}:outbox-waiting', conv)
if ARGV[8] ~= '-' then
  redis.call('HSET', hk, 'l', ARGV[6])
  if ARGV[8] == '1' then redis.call('HSET', hk, 'a', ARGV[6]) end
  if ARGV[9] ~= '' then redis.call('HSET', hk, 'an', ARGV[9]) end
end
if ARGV[7] ~= '' then
  local rk = key(prefix, tag, 'record', conv)
  redis.call('RPUSH', rk, ARGV[7])
  redis.call('EXPIRE', rk, tonumber(ARGV[14]))
  redis.call('ZADD', prefix .. '{' .. tag .. '}:record-due', 'NX', ARGV[6], conv)
end
local leased = 0
local head = {}
if ARGV[11] ~= '' and string.find(ARGV[17], ',' .. h['channel'] .. ',', 1, true) then
  if redis.call('SET', key(prefix, tag, 'outbox-lease', conv), ARGV[11], 'NX', 'PX', ARGV[12]) then
    leased = 1
    head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  end
end
redis.call('PUBLISH', ARGV[15], conv)
return {1, v, conv, id, leased, head}
"""
)

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

# Keep one entry; the conversation is due from now if it had none. KEYS: the
# list, the tag's due set; ARGV: the entry, ttl s, now, conversation.
_RECORD_ADD_SCRIPT = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[4])
return 1
"""

# Drop the written entries; the conversation is due again from now if any wait.
# KEYS: the list, the tag's due set; ARGV: count, now, conversation.
_DROP_SCRIPT = """
redis.call('LTRIM', KEYS[1], tonumber(ARGV[1]), -1)
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[3])
else
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
end
return 1
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

    def per_tag(self, tag: str, what: str) -> str:
        """An index of the conversations of one tag (open, outbox-waiting, record-due)."""
        return f"{self.prefix}{{{tag}}}:{what}"

    def per_tag_of(self, conversation_id: str, what: str) -> str:
        return self.per_tag(conversation_tag(conversation_id), what)

    def every_tag(self, what: str) -> List[str]:
        """The index ``what`` of every tag, for its readers (one round trip, pipelined)."""
        return [self.per_tag(tag, what) for tag in all_tags()]

    @property
    def nudge(self) -> str:
        return f"{self.prefix}outbox:nudge"

    @property
    def sweeper(self) -> str:
        return f"{self.prefix}sweeper"

    @property
    def line_wake(self) -> str:
        return f"{self.prefix}line:wake"


class RedisRecordBuffer(RecordBuffer):
    """Relayed turns waiting for the tracker, in Redis beside the handoffs.

    A list per conversation (``record:<conversation>``) and, per tag, a sorted
    set of the conversations with entries scored by when their oldest entry came
    (``record-due``), both in the conversation's slot.
    """

    def __init__(self, board: "RedisSwitchboard") -> None:
        self._board = board
        redis = board.redis
        self._redis: Any = redis
        self._add = redis.register_script(_RECORD_ADD_SCRIPT)
        self._drop = redis.register_script(_DROP_SCRIPT)
        self._unlock = redis.register_script(_UNLOCK_SCRIPT)

    def _keys(self, conversation_id: str) -> List[str]:
        keys = self._board.keys
        return [keys.of(conversation_id, "record"), keys.per_tag_of(conversation_id, "record-due")]

    def _lock_key(self, conversation_id: str) -> str:
        return self._board.keys.of(conversation_id, "record-lock")

    async def add(self, conversation_id: str, raw: str) -> None:
        await self._board.call(
            "record",
            self._add(
                keys=self._keys(conversation_id),
                args=[raw, RECORD_TTL, time.time(), conversation_id],
            ),
        )

    async def peek(self, conversation_id: str) -> List[str]:
        raws = await self._board.call(
            "record read", self._redis.lrange(self._keys(conversation_id)[0], 0, -1)
        )
        return [str(raw) for raw in raws]

    async def drop(self, conversation_id: str, count: int) -> None:
        await self._board.call(
            "record drop",
            self._drop(
                keys=self._keys(conversation_id), args=[count, time.time(), conversation_id]
            ),
        )

    async def due(self, older_than: Optional[float]) -> List[str]:
        top = "+inf" if older_than is None else time.time() - older_than
        pipe = self._board.clients.pipeline()
        for key in self._board.keys.every_tag("record-due"):
            pipe.zrangebyscore(key, "-inf", top)
        shards = await self._board.call("record due", pipe.execute())
        return [str(member) for shard in shards for member in shard]

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
    """Hears the line's wake-ups (a channel of the process's one subscriber) and wakes this
    process's waiters; after the subscriber connected again, every waiter looks again."""

    def __init__(self, board: "RedisSwitchboard") -> None:
        self._board = board
        self._events: Dict[str, asyncio.Event] = {}
        self._waiting: Dict[str, int] = {}
        board.clients.subscriber.register(board.keys.line_wake, self._woken, self._wake_all)

    def _woken(self, conversation_id: str) -> None:
        event = self._events.get(conversation_id)
        if event is not None:
            event.set()

    def _wake_all(self) -> None:
        for event in self._events.values():
            event.set()

    def arm(self, conversation_id: str) -> asyncio.Event:
        """An event the next wake-up of ``conversation_id`` sets; arm it before looking."""
        self._board.clients.subscriber.start()
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


class RedisSwitchboard(Switchboard):
    """Handoffs in Redis: shared by every Rasa instance, kept across restarts."""

    records: RedisRecordBuffer
    outbox_store: RedisOutboxStore

    def __init__(
        self,
        redis: Union[RedisClients, RedisConnection, str],
        prefix: str = "omnidesk:",
        timeout: float = 5.0,
        line_lease: float = LINE_LEASE,
        outbox_retention: float = 86400.0,
        wait_replicas: int = 0,
        wait_timeout: float = 0.5,
    ) -> None:
        """``redis``: the process's clients, or a connection or URL to make clients of its
        own, closed with it. ``wait_replicas``: how many replicas must confirm an outbox
        put (``WAIT``) within ``wait_timeout`` seconds before it counts as stored."""
        self.line_lease = line_lease
        self._owns_clients = not isinstance(redis, RedisClients)
        if isinstance(redis, str):
            redis = RedisClients.for_url(redis, timeout)
        elif isinstance(redis, RedisConnection):
            redis = RedisClients(redis, timeout)
        self.clients: RedisClients = redis
        self._redis: Any = redis.data
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
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
        self._accept = self._redis.register_script(_ACCEPT_SCRIPT)
        self._wakes = _Wakes(self)
        self.records = RedisRecordBuffer(self)
        self.outbox_store = RedisOutboxStore(self, outbox_retention)
        # Leaves of the line retried in the background after Redis failed them.
        self._holding: Set[asyncio.Future[None]] = set()
        # conversation -> the ticket of a place whose arrival may have been stored
        # though its answer was lost: the turn, tried again, asks with that ticket.
        self._unsure: Dict[str, str] = {}

    @property
    def redis(self) -> Any:
        """The connection, for state kept beside the handoffs."""
        return self._redis

    @property
    def prefix(self) -> str:
        return self.keys.prefix

    # What the outbox store raises for a failed store step (it imports no switchboard).
    error_class = SwitchboardError

    @staticmethod
    def reply_lost(error: BaseException) -> bool:
        return isinstance(error, SwitchboardError) and reply_lost(error)

    async def call(self, what: str, coroutine: Any) -> Any:
        """Await a Redis call; a failure becomes a SwitchboardError that says what failed."""
        from redis.exceptions import RedisError

        try:
            return await coroutine
        except (RedisError, OSError, asyncio.TimeoutError) as error:
            metrics.switchboard_error(what)
            raise SwitchboardError(
                f"switchboard {what} failed: {type(error).__name__}: {error}; "
                f"check that Redis ({self.clients.connection.for_logs()}) is reachable"
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
            try:
                answer = await self.call("line", script(keys=keys, args=args))
            except SwitchboardError as error:
                if not reply_lost(error):
                    raise
                # The script may have run: ask again with the same ticket. The check
                # script stands it in line only if it is not there yet, and gives a
                # served place the number it was given.
                answer = await self.call("line", self._check(keys=keys, args=args))
        except SwitchboardError as error:
            if reply_lost(error):
                # Still unknown (Redis is failing over): the turn, tried again, asks
                # with this ticket, so it neither waits behind itself nor skips a number.
                if len(self._unsure) > 10_000:
                    self._unsure.clear()
                self._unsure[place.conversation_id] = place.ticket
            raise
        return self._served(place.conversation_id, answer, place)

    @contextlib.asynccontextmanager
    async def in_line(
        self, conversation_id: str, numbered: bool, wait: float
    ) -> AsyncIterator[Place]:
        deadline = time.monotonic() + wait
        place = Place(conversation_id, first=False)
        unsure = self._unsure.pop(conversation_id, None)
        if unsure is not None:
            place.ticket = unsure
        self._wakes.enter(conversation_id)
        entered = False
        keeper: Optional[asyncio.Task[None]] = None
        try:
            woken = self._wakes.arm(conversation_id)
            place = await self._take(
                place, self._arrive if unsure is None else self._check, numbered
            )
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
        keys = [
            *self._line_keys(conversation_id)[:2],
            self.keys.of(conversation_id, "record"),
            self.keys.per_tag_of(conversation_id, "record-due"),
        ]
        args: List[Any] = [
            place.ticket,
            self.keys.line_wake,
            conversation_id,
            RECORD_TTL,
            time.time(),
            *place.kept,
        ]
        leaving = asyncio.ensure_future(self.call("line", self._leave(keys=keys, args=args)))
        try:
            await asyncio.shield(leaving)
        except SwitchboardError as error:
            # Redis failing over, most likely: keep trying in the background for as
            # long as the place would hold the line, so the relayed turns still
            # reach the tracker (a repeat is harmless: each entry's id is written once).
            logger.warning(
                "Could not leave the line of conversation %s yet%s, trying again for %.0f s: %s",
                conversation_id,
                f" (with {len(place.kept)} relayed turns for its tracker)" if place.kept else "",
                self.line_lease,
                error,
            )
            retrying = asyncio.ensure_future(self._leave_later(place, keys, args))
            self._holding.add(retrying)
            retrying.add_done_callback(self._holding.discard)

    async def _leave_later(self, place: Place, keys: List[str], args: List[Any]) -> None:
        deadline = time.monotonic() + self.line_lease
        pause = 0.25
        while True:
            await asyncio.sleep(pause)
            try:
                await self.call("line", self._leave(keys=keys, args=args))
            except SwitchboardError as error:
                if time.monotonic() + pause > deadline:
                    # The place lapses on its own within the lease; turns kept here are
                    # lost to the tracker (they did reach the agent), so say so.
                    logger.error(
                        "Could not leave the line of conversation %s%s: %s",
                        place.conversation_id,
                        f" nor keep {len(place.kept)} relayed turns for its tracker"
                        if place.kept
                        else "",
                        error,
                    )
                    return
                pause = min(pause * 2, 2.0)
                continue
            logger.info(
                "Left the line of conversation %s after Redis came back.", place.conversation_id
            )
            return

    # -- handoffs -------------------------------------------------------------------------

    def _chat_key_in_slot(self, conversation_id: str, chat_session_id: str) -> Optional[str]:
        """The chat's lookup key when it sits in the conversation's slot, else None."""
        if tag_of_chat(chat_session_id) == conversation_tag(conversation_id):
            return self.keys.chat(chat_session_id)
        return None

    async def start(self, handoff: Handoff) -> Optional[Handoff]:
        conversation_id = handoff.conversation_id
        chat_key = self._chat_key_in_slot(conversation_id, handoff.chat_session_id)
        if chat_key is None:
            # A chat id the action did not make (no tag, or another conversation's):
            # its lookup key is in another slot, written by a command of its own.
            await self.call(
                "start", self._redis.set(self.keys.chat(handoff.chat_session_id), conversation_id)
            )
        tag = conversation_tag(conversation_id)
        replaced = await self.call(
            "start",
            self._start(
                keys=[
                    self.keys.handoff(conversation_id),
                    chat_key or self.keys.of(conversation_id, "chat-foreign"),
                    self.keys.per_tag(tag, "open"),
                ],
                args=[
                    handoff.to_json(),
                    handoff.next_message_number,
                    handoff.last_activity,
                    conversation_id,
                    self.keys.prefix,
                    tag,
                ],
            ),
        )
        previous = _from_fields(replaced, including_ending=True) if replaced else None
        if (
            previous is not None
            and previous.chat_session_id != handoff.chat_session_id
            and self._chat_key_in_slot(conversation_id, previous.chat_session_id) is None
        ):
            await self.call("start", self._redis.delete(self.keys.chat(previous.chat_session_id)))
        return previous

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
        """One script, one round trip: found, stored, touched, recorded, leased, nudged.

        A chat id the action made carries its conversation's tag, so its lookup
        key is in the slot of everything else the script touches. Another chat
        id is looked up first (a second round trip).
        """
        tag = tag_of_chat(chat_session_id)
        conversation_id = ""
        first_key = self.keys.chat(chat_session_id)
        if tag is None:
            found = await self.call("lookup", self._redis.get(first_key))
            if found is None:
                return None
            conversation_id = str(found)
            tag = conversation_tag(conversation_id)
            first_key = self.keys.handoff(conversation_id)
        args: List[Any] = [
            self.keys.prefix,
            tag,
            conversation_id,
            chat_session_id,
            item_json,
            repr(at),
            record or "",
            {"agent": "1", "other": "0"}.get(activity, "-"),
            json.dumps(list(agent)) if agent is not None else "",
            "1" if fill_agent else "0",
            lease[0] if lease is not None else "",
            int(lease[1] * 1000) if lease is not None else 0,
            self.outbox_store.key_ttl,
            RECORD_TTL,
            self.keys.nudge,
            uuid.uuid4().hex,
            "," + ",".join(lease_channels) + ",",
        ]
        answer, confirmed = await self._accept_once(first_key, args)
        if answer and int(answer[0]) == 0 and not conversation_id:
            # The chat id carries another tag than its conversation's: ask there.
            conversation_id = str(answer[1])
            args[1], args[2] = conversation_tag(conversation_id), conversation_id
            first_key = self.keys.handoff(conversation_id)
            answer, confirmed = await self._accept_once(first_key, args)
        if not answer or int(answer[0]) != 1:
            return None
        _one, fields, conversation, entry_id, leased, head = answer
        if confirmed is not None and confirmed < self.wait_replicas:
            await self._take_back(str(conversation), str(entry_id), record, lease, int(leased))
            raise SwitchboardError(
                f"agent message not confirmed: {confirmed} of {self.wait_replicas} replicas "
                f"(redis_wait_replicas) had it within {self.wait_timeout:g} s "
                "(redis_wait_timeout); it was taken back. Check the replicas' link to the master."
            )
        handoff = _from_fields(fields)
        if handoff is None:
            return None
        accepted = Accepted(handoff, str(entry_id))
        if int(leased) and lease is not None:
            rows = rows_of(head)
            accepted.leased = lease[0]
            accepted.head = rows[0] if rows else None
        return accepted

    async def _accept_once(self, first_key: str, args: List[Any]) -> Tuple[Any, Optional[int]]:
        """The accept script's answer, and with ``redis_wait_replicas`` how many replicas
        confirmed its writes (``WAIT`` on the same connection), else None."""
        if self.wait_replicas <= 0:
            return await self.call("accept", self._accept(keys=[first_key], args=args)), None
        answers = await self.outbox_store.confirmed(self._accept, [first_key], args)
        return answers[0], int(answers[-1])

    async def _take_back(
        self,
        conversation_id: str,
        entry_id: str,
        record: Optional[str],
        lease: Optional[Tuple[str, float]],
        leased: int,
    ) -> None:
        """Undo an agent message too few replicas confirmed: Omnidesk will send it again."""
        metrics.switchboard_error("accept")
        pipe = self.clients.pipeline()
        pipe.xdel(self.keys.of(conversation_id, "outbox"), entry_id)
        if record:
            pipe.lrem(self.keys.of(conversation_id, "record"), 1, record)
        await self.call("accept", pipe.execute())
        if leased and lease is not None:
            await self.outbox_store.release(conversation_id, lease[0])

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
        tag = conversation_tag(conversation_id)
        ended = await self.call(
            "end",
            self._end(
                keys=[self.keys.handoff(conversation_id), self.keys.per_tag(tag, "open")],
                args=[
                    chat_session_id or "",
                    tell_omnidesk or "",
                    time.time(),
                    conversation_id,
                    self.keys.prefix,
                    tag,
                ],
            ),
        )
        handoff = _from_fields(ended) if ended else None
        if handoff is not None and tell_omnidesk is None:
            await self._forget_foreign_chat(handoff)
        return handoff

    async def told_omnidesk(self, conversation_id: str, chat_session_id: str) -> None:
        tag = conversation_tag(conversation_id)
        forgotten = await self.call(
            "told",
            self._told(
                keys=[self.keys.handoff(conversation_id), self.keys.per_tag(tag, "open")],
                args=[chat_session_id, conversation_id, self.keys.prefix, tag],
            ),
        )
        if int(forgotten) and self._chat_key_in_slot(conversation_id, chat_session_id) is None:
            await self.call("told", self._redis.delete(self.keys.chat(chat_session_id)))

    async def _forget_foreign_chat(self, handoff: Handoff) -> None:
        """A chat id the action did not make has its lookup key elsewhere: removed apart."""
        if self._chat_key_in_slot(handoff.conversation_id, handoff.chat_session_id) is None:
            await self.call("end", self._redis.delete(self.keys.chat(handoff.chat_session_id)))

    async def _open_members(self) -> List[str]:
        pipe = self.clients.pipeline()
        for key in self.keys.every_tag("open"):
            pipe.smembers(key)
        shards = await self.call("list", pipe.execute())
        return sorted(str(member) for shard in shards for member in shard)

    async def count_open(self) -> int:
        pipe = self.clients.pipeline()
        for key in self.keys.every_tag("open"):
            pipe.scard(key)
        return sum(int(count) for count in await self.call("count", pipe.execute()))

    async def all(self) -> List[Handoff]:
        members = await self._open_members()
        if not members:
            return []
        # One round trip for every handoff: the sweeper must not hold up the loop
        # with one trip per chat.
        pipe = self.clients.pipeline()
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
        for conversation_id in gone:
            # An index entry of a handoff removed without it (by hand, or by expiry).
            await self.call(
                "list",
                self._redis.srem(self.keys.per_tag_of(conversation_id, "open"), conversation_id),
            )
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
        for retrying in list(self._holding):
            retrying.cancel()
        await self.outbox_store.close()
        if self._owns_clients:
            await self.clients.close()


def reply_lost(error: SwitchboardError) -> bool:
    """Whether a call may have been done though its answer never came: it timed out, or
    its connection broke (a master killed mid-call). Refused connections say it was not."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeout

    cause = error.__cause__
    if isinstance(cause, (RedisTimeout, asyncio.TimeoutError)):
        return True
    if isinstance(cause, (RedisConnectionError, OSError)):
        text = str(cause).lower()
        refused = "refused" in text or "error 111" in text or "connecting to" in text
        return not refused
    return False


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


def create_switchboard(
    clients: Optional[RedisClients],
    outbox_retention: float = 86400.0,
    line_lease: float = LINE_LEASE,
    wait_replicas: int = 0,
    wait_timeout: float = 0.5,
) -> Switchboard:
    """In memory without Redis clients; in Redis with the process's clients (redis_clients.py)."""
    if clients is None:
        return InMemorySwitchboard()
    return RedisSwitchboard(
        clients,
        line_lease=line_lease,
        outbox_retention=outbox_retention,
        wait_replicas=wait_replicas,
        wait_timeout=wait_timeout,
    )
