"""Where outbox entries, drainer leases and socket.io presence live.

``OutboxStore`` is what the outbox (outbox.py: its drainer, presence and the
customer's pulls) asks of storage: per-conversation ordered entries (as JSON
strings) under ids that compare in the order they were put (``entry_order``),
a fenced lease per conversation, the conversations with entries waiting,
socket.io presence with an expiry, a nudge to every instance when an entry is
put, and, for a customer who pulls (rest), reading after a cursor,
acknowledging up to an id and the last entry a poll or stream handed out.
``InMemoryOutboxStore`` keeps it in this process
(``memory://``); ``RedisOutboxStore`` keeps it in the switchboard's Redis, a
Stream per conversation (docs/architecture.md, "The outbox", says why).
"""

import abc
import asyncio
import contextlib
import logging
import re
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from connectors.omnidesk import metrics
from connectors.omnidesk.channel.redis_switchboard import RedisKeys, reply_lost
from connectors.omnidesk.channel.switchboard import SwitchboardError

logger = logging.getLogger(__name__)

# An entry id: milliseconds and a sequence number, as Redis Streams make them.
_ENTRY_ID = re.compile(r"[0-9]{1,15}-[0-9]{1,15}")


def is_entry_id(text: str) -> bool:
    """Whether ``text`` has an entry id's shape (``1733000000000-0``)."""
    return bool(_ENTRY_ID.fullmatch(text))


def entry_order(entry_id: str) -> Tuple[int, int]:
    """An entry id as (milliseconds, sequence): ids compare in the order entries were put."""
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _next_id(entry_id: str) -> str:
    """The smallest id after ``entry_id`` (an exclusive range start Redis 5 understands too)."""
    milliseconds, sequence = entry_order(entry_id)
    return f"{milliseconds}-{sequence + 1}"


class OutboxStore(abc.ABC):
    """Per-conversation ordered entries, the drainer lease, and socket.io presence."""

    @abc.abstractmethod
    async def put(self, conversation_id: str, raw: str) -> str:
        """Append one entry; its id. Raises SwitchboardError when it could not be stored."""

    @abc.abstractmethod
    async def head(self, conversation_id: str, count: int) -> List[Tuple[str, str]]:
        """The oldest ``count`` entries as (id, raw), oldest first."""

    @abc.abstractmethod
    async def remove(self, conversation_id: str, entry_id: str, token: str) -> bool:
        """Remove an entry, only while ``token`` holds the lease; False when it does not."""

    @abc.abstractmethod
    async def lease(self, conversation_id: str, token: str, ttl: float) -> bool:
        """Take or extend the conversation's drainer lease; False when another holds it."""

    @abc.abstractmethod
    async def release(self, conversation_id: str, token: str) -> None:
        """Give the lease up, if ``token`` still holds it."""

    @abc.abstractmethod
    async def waiting(self) -> List[str]:
        """The conversations that may have entries waiting."""

    @abc.abstractmethod
    async def count_waiting(self) -> int:
        """How many entries wait, in every conversation, for the metrics."""

    @abc.abstractmethod
    async def read_after(
        self, conversation_id: str, after: Optional[str], count: int
    ) -> List[Tuple[str, str]]:
        """Up to ``count`` entries with ids after ``after`` (all with None), oldest first."""

    @abc.abstractmethod
    async def acknowledge(self, conversation_id: str, up_to: str) -> List[str]:
        """Remove every entry with an id up to ``up_to``, whoever drains; the entries removed."""

    @abc.abstractmethod
    async def note_handed(self, conversation_id: str, entry_id: str) -> None:
        """A poll or stream handed the customer's client the entries up to ``entry_id``."""

    @abc.abstractmethod
    async def handed(self, conversation_id: str) -> Optional[str]:
        """The last entry id a poll or stream handed out, or None."""

    @abc.abstractmethod
    async def mark_present(self, recipient_id: str, socket_id: str, ttl: float) -> None:
        """A socket of ``recipient_id`` is connected; counts for ``ttl`` seconds."""

    async def mark_present_many(self, held: List[Tuple[str, str]], ttl: float) -> None:
        """``mark_present`` for each (recipient, socket id); one round trip where it can."""
        for recipient_id, socket_id in held:
            await self.mark_present(recipient_id, socket_id, ttl)

    @abc.abstractmethod
    async def mark_gone(self, recipient_id: str, socket_id: str) -> None:
        """The socket disconnected."""

    @abc.abstractmethod
    async def present(self, recipient_id: str) -> bool:
        """Whether a socket of ``recipient_id`` is connected on some instance."""

    async def listen(self, on_nudge: Callable[[str], None]) -> None:
        """Hear every instance's puts (``on_nudge(conversation_id)``) until cancelled."""
        await asyncio.Event().wait()  # one process: puts are heard where they are made

    async def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release connections."""


class InMemoryOutboxStore(OutboxStore):
    """One process: entries in lists, leases and presence in dicts.

    Entry ids have the Redis Streams' shape and order (milliseconds, then a
    sequence within the millisecond, never going back), so a customer's
    cursor reads the same with either store.
    """

    def __init__(self) -> None:
        self._entries: Dict[str, List[Tuple[str, str]]] = {}
        self._leases: Dict[str, Tuple[str, float]] = {}
        self._presence: Dict[str, Dict[str, float]] = {}
        self._handed: Dict[str, str] = {}
        self._last_id: Tuple[int, int] = (0, 0)

    def _new_id(self) -> str:
        now = int(time.time() * 1000)
        milliseconds, sequence = self._last_id
        self._last_id = (now, 0) if now > milliseconds else (milliseconds, sequence + 1)
        return f"{self._last_id[0]}-{self._last_id[1]}"

    async def put(self, conversation_id: str, raw: str) -> str:
        entry_id = self._new_id()
        self._entries.setdefault(conversation_id, []).append((entry_id, raw))
        return entry_id

    async def head(self, conversation_id: str, count: int) -> List[Tuple[str, str]]:
        return list(self._entries.get(conversation_id, [])[:count])

    def _holds(self, conversation_id: str, token: str) -> bool:
        held = self._leases.get(conversation_id)
        return held is not None and held[0] == token and held[1] > time.monotonic()

    async def remove(self, conversation_id: str, entry_id: str, token: str) -> bool:
        if not self._holds(conversation_id, token):
            return False
        entries = self._entries.get(conversation_id, [])
        self._entries[conversation_id] = [e for e in entries if e[0] != entry_id]
        if not self._entries[conversation_id]:
            self._forget(conversation_id)
        return True

    def _forget(self, conversation_id: str) -> None:
        # With nothing waiting, what was handed out no longer matters.
        self._entries.pop(conversation_id, None)
        self._handed.pop(conversation_id, None)

    async def lease(self, conversation_id: str, token: str, ttl: float) -> bool:
        held = self._leases.get(conversation_id)
        if held is not None and held[0] != token and held[1] > time.monotonic():
            return False
        self._leases[conversation_id] = (token, time.monotonic() + ttl)
        return True

    async def release(self, conversation_id: str, token: str) -> None:
        held = self._leases.get(conversation_id)
        if held is not None and held[0] == token:
            del self._leases[conversation_id]

    async def waiting(self) -> List[str]:
        return list(self._entries)

    async def count_waiting(self) -> int:
        return sum(len(entries) for entries in self._entries.values())

    async def read_after(
        self, conversation_id: str, after: Optional[str], count: int
    ) -> List[Tuple[str, str]]:
        entries = self._entries.get(conversation_id, [])
        if after is not None:
            cursor = entry_order(after)
            entries = [entry for entry in entries if entry_order(entry[0]) > cursor]
        return list(entries[:count])

    async def acknowledge(self, conversation_id: str, up_to: str) -> List[str]:
        entries = self._entries.get(conversation_id, [])
        cursor = entry_order(up_to)
        kept = [entry for entry in entries if entry_order(entry[0]) > cursor]
        if kept:
            self._entries[conversation_id] = kept
        else:
            self._forget(conversation_id)
        return [raw for entry_id, raw in entries if entry_order(entry_id) <= cursor]

    async def note_handed(self, conversation_id: str, entry_id: str) -> None:
        if conversation_id not in self._entries:
            return
        current = self._handed.get(conversation_id)
        if current is None or entry_order(entry_id) > entry_order(current):
            self._handed[conversation_id] = entry_id

    async def handed(self, conversation_id: str) -> Optional[str]:
        return self._handed.get(conversation_id)

    async def mark_present(self, recipient_id: str, socket_id: str, ttl: float) -> None:
        self._presence.setdefault(recipient_id, {})[socket_id] = time.monotonic() + ttl

    async def mark_gone(self, recipient_id: str, socket_id: str) -> None:
        sockets = self._presence.get(recipient_id, {})
        sockets.pop(socket_id, None)
        if not sockets:
            self._presence.pop(recipient_id, None)

    async def present(self, recipient_id: str) -> bool:
        now = time.monotonic()
        return any(until > now for until in self._presence.get(recipient_id, {}).values())


# Remove an entry only while the caller's token holds the lease (the fencing
# check). Returns -1 when the lease is not the caller's, else how many entries
# are left (0: the stream is gone, and the caller takes the conversation off
# the waiting set, a key of another slot).
_REMOVE_SCRIPT = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
redis.call('XDEL', KEYS[1], ARGV[2])
local left = redis.call('XLEN', KEYS[1])
if left == 0 then redis.call('DEL', KEYS[1]) end
return left
"""

_LEASE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# Presence scores are expiry times by Redis's own clock, so instances need not agree.
_MARK_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

_PRESENT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""

# Remove every entry up to an id, whoever drains: the customer's client says it
# has them; returns what it took off. An empty stream stays until it expires, so
# the ids of the entries put after it keep growing (a stream made anew would take
# its ids from the clock again). The caller takes the conversation off the
# waiting set, a key of another slot.
_ACKNOWLEDGE_SCRIPT = """
local rows = redis.call('XRANGE', KEYS[1], '-', ARGV[1])
local removed = {}
for _, row in ipairs(rows) do
  redis.call('XDEL', KEYS[1], row[1])
  removed[#removed + 1] = row[2][2]
end
return removed
"""

# Keep the larger of two entry ids (milliseconds, then sequence), with an expiry.
_HANDED_SCRIPT = """
local function order(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local current = redis.call('GET', KEYS[1])
if current then
  local cms, cseq = order(current)
  local nms, nseq = order(ARGV[1])
  if cms > nms or (cms == nms and cseq >= nseq) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class RedisOutboxStore(OutboxStore):
    """Redis: a Stream per conversation, a set of conversations with entries, leases, presence.

    Keys (prefix ``omnidesk:``, each of a conversation in its hash slot,
    redis_switchboard.RedisKeys): ``outbox:<conversation>`` (Stream, expires
    ``retention`` plus an hour after its last entry as a safety net; the
    drainer drops and logs older entries first), ``outbox-lease:<conversation>``
    (string, PX), ``presence:<recipient>`` (sorted set: socket id scored by when
    it stops counting), ``outbox-handed:<conversation>`` (string: the last entry
    id a poll or stream handed out, expiring with the stream), and
    ``outbox:waiting`` (set, the conversations with entries; kept by commands of
    their own beside the per-conversation scripts).
    """

    def __init__(
        self, url: str, retention: float, prefix: str = "omnidesk:", timeout: float = 5.0
    ) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.from_url(
            url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        # Nudges arrive whenever someone puts: a quiet minute is no timeout there.
        self._listener: Any = aioredis.from_url(
            url,
            decode_responses=True,
            socket_timeout=None,
            socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        self._keys = RedisKeys(prefix)
        self._key_ttl = int(retention) + 3600
        self._remove = self._redis.register_script(_REMOVE_SCRIPT)
        self._lease = self._redis.register_script(_LEASE_SCRIPT)
        self._release = self._redis.register_script(_RELEASE_SCRIPT)
        self._mark = self._redis.register_script(_MARK_SCRIPT)
        self._present = self._redis.register_script(_PRESENT_SCRIPT)
        self._acknowledge = self._redis.register_script(_ACKNOWLEDGE_SCRIPT)
        self._note_handed = self._redis.register_script(_HANDED_SCRIPT)

    def _stream(self, conversation_id: str) -> str:
        return self._keys.of(conversation_id, "outbox")

    def _lease_key(self, conversation_id: str) -> str:
        return self._keys.of(conversation_id, "outbox-lease")

    def _waiting_key(self) -> str:
        return f"{self._keys.prefix}outbox:waiting"

    def _presence_key(self, recipient_id: str) -> str:
        return self._keys.of(recipient_id, "presence")

    def _handed_key(self, conversation_id: str) -> str:
        return self._keys.of(conversation_id, "outbox-handed")

    async def _call(self, what: str, coroutine: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await coroutine
        except (RedisError, OSError, asyncio.TimeoutError) as error:
            metrics.switchboard_error(f"outbox_{what}")
            raise SwitchboardError(
                f"outbox {what} failed: {type(error).__name__}: {error}; "
                "check that Redis at OMNIDESK_SWITCHBOARD_URL is reachable"
            ) from error

    def _nudge_channel(self) -> str:
        return f"{self._keys.prefix}outbox:nudge"

    async def put(self, conversation_id: str, raw: str) -> str:
        """Append the entry; a reply lost after it was sent is resolved by reading back.

        The entry carries a mark of its own (``u``): when the reply times out,
        the stream's tail is read for it, so an agent's message that was stored
        is answered ``ok`` rather than 503 (and would otherwise be sent twice).
        """
        stream = self._stream(conversation_id)
        mark = uuid.uuid4().hex
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(stream, {"e": raw, "u": mark})
        pipe.expire(stream, self._key_ttl)
        pipe.sadd(self._waiting_key(), conversation_id)
        # The instance holding the customer's socket may be another one: tell them all.
        pipe.publish(self._nudge_channel(), conversation_id)
        try:
            results = await self._call("put", pipe.execute())
        except SwitchboardError as error:
            stored = await self._stored(stream, mark) if reply_lost(error) else None
            if stored is None:
                raise
            logger.warning(
                "Outbox put of conversation %s: the reply was lost, the entry is stored.",
                conversation_id,
            )
            await self._call("put", self._redis.sadd(self._waiting_key(), conversation_id))
            return stored
        return str(results[0])

    async def _stored(self, stream: str, mark: str) -> Optional[str]:
        """The id of the entry carrying ``mark`` among the stream's newest, or None."""
        rows = await self._call("put", self._redis.xrevrange(stream, "+", "-", count=100))
        for entry_id, fields in rows:
            if fields.get("u") == mark:
                return str(entry_id)
        return None

    async def _forget(self, conversation_id: str) -> None:
        """Take a conversation whose stream is empty off the waiting set.

        The set is in another slot than the stream, so this is not one script:
        the stream is looked at again after the removal, and a put that came in
        between puts the conversation back (a put adds to the set after its
        entry, so either this sees the entry or the put's own add comes later).
        """
        stream = self._stream(conversation_id)
        if int(await self._call("forget", self._redis.xlen(stream))) > 0:
            return
        await self._call("forget", self._redis.srem(self._waiting_key(), conversation_id))
        if int(await self._call("forget", self._redis.xlen(stream))) > 0:
            await self._call("forget", self._redis.sadd(self._waiting_key(), conversation_id))

    async def listen(self, on_nudge: Callable[[str], None]) -> None:
        failing = False
        while True:
            pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._nudge_channel())
                if failing:
                    logger.info("Outbox nudges heard again.")
                    failing = False
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        on_nudge(str(message.get("data")))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not failing:
                    logger.error(
                        "Outbox nudges not heard (the poll still finds waiting messages): %s: %s",
                        type(error).__name__,
                        error,
                    )
                failing = True
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.close()

    async def head(self, conversation_id: str, count: int) -> List[Tuple[str, str]]:
        stream = self._stream(conversation_id)
        rows = await self._call("read", self._redis.xrange(stream, "-", "+", count=count))
        if not rows:
            await self._forget(conversation_id)
        return [(str(entry_id), str(fields.get("e", ""))) for entry_id, fields in rows]

    async def remove(self, conversation_id: str, entry_id: str, token: str) -> bool:
        left = int(
            await self._call(
                "remove",
                self._remove(
                    keys=[self._stream(conversation_id), self._lease_key(conversation_id)],
                    args=[token, entry_id],
                ),
            )
        )
        if left == 0:
            await self._forget(conversation_id)
        return left >= 0

    async def lease(self, conversation_id: str, token: str, ttl: float) -> bool:
        taken = await self._call(
            "lease",
            self._lease(keys=[self._lease_key(conversation_id)], args=[token, int(ttl * 1000)]),
        )
        return bool(int(taken))

    async def release(self, conversation_id: str, token: str) -> None:
        await self._call(
            "release", self._release(keys=[self._lease_key(conversation_id)], args=[token])
        )

    async def waiting(self) -> List[str]:
        members = await self._call("list", self._redis.smembers(self._waiting_key()))
        return sorted(str(member) for member in members)

    async def count_waiting(self) -> int:
        conversations = await self.waiting()
        if not conversations:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for conversation_id in conversations:
            pipe.xlen(self._stream(conversation_id))
        lengths = await self._call("count", pipe.execute())
        return sum(int(length) for length in lengths)

    async def read_after(
        self, conversation_id: str, after: Optional[str], count: int
    ) -> List[Tuple[str, str]]:
        start = "-" if after is None else _next_id(after)
        rows = await self._call(
            "read",
            self._redis.xrange(self._stream(conversation_id), start, "+", count=count),
        )
        return [(str(entry_id), str(fields.get("e", ""))) for entry_id, fields in rows]

    async def acknowledge(self, conversation_id: str, up_to: str) -> List[str]:
        removed = await self._call(
            "acknowledge",
            self._acknowledge(keys=[self._stream(conversation_id)], args=[up_to]),
        )
        if removed:
            await self._forget(conversation_id)
        return [str(raw) for raw in removed]

    async def note_handed(self, conversation_id: str, entry_id: str) -> None:
        await self._call(
            "handed",
            self._note_handed(
                keys=[self._handed_key(conversation_id)], args=[entry_id, self._key_ttl * 1000]
            ),
        )

    async def handed(self, conversation_id: str) -> Optional[str]:
        value = await self._call("handed", self._redis.get(self._handed_key(conversation_id)))
        return None if value is None else str(value)

    async def mark_present(self, recipient_id: str, socket_id: str, ttl: float) -> None:
        await self._call(
            "presence",
            self._mark(keys=[self._presence_key(recipient_id)], args=[socket_id, int(ttl * 1000)]),
        )

    async def mark_present_many(self, held: List[Tuple[str, str]], ttl: float) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for recipient_id, socket_id in held:
            await self._mark(
                keys=[self._presence_key(recipient_id)],
                args=[socket_id, int(ttl * 1000)],
                client=pipe,
            )
        await self._call("presence", pipe.execute())

    async def mark_gone(self, recipient_id: str, socket_id: str) -> None:
        await self._call("presence", self._redis.zrem(self._presence_key(recipient_id), socket_id))

    async def present(self, recipient_id: str) -> bool:
        count = await self._call("presence", self._present(keys=[self._presence_key(recipient_id)]))
        return int(count) > 0

    async def close(self) -> None:
        await self._redis.close()
        await self._listener.close()


def create_outbox_store(switchboard_url: str, retention: float) -> OutboxStore:
    """In this process with ``memory://``; in the switchboard's Redis otherwise."""
    if switchboard_url.startswith("memory://") or switchboard_url in {"", "memory"}:
        return InMemoryOutboxStore()
    return RedisOutboxStore(switchboard_url, retention)
