"""Where outbox entries, drainer leases and socket.io presence live.

``OutboxStore`` is what the outbox (outbox.py: its drainer and presence) asks
of storage: per-conversation ordered entries (as
JSON strings), a fenced lease per conversation, the conversations with entries
waiting, socket.io presence with an expiry, and a nudge to every instance when
an entry is put. ``InMemoryOutboxStore`` keeps it in this process
(``memory://``); ``RedisOutboxStore`` keeps it in the switchboard's Redis, a
Stream per conversation (docs/architecture.md, "The outbox", says why), on the
clients the process shares (redis_clients.py). With ``redis_wait_replicas`` a
put is confirmed by that many replicas (``WAIT``) before it counts as stored.
"""

import abc
import asyncio
import logging
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

from connectors.omnidesk import metrics
from connectors.omnidesk.channel.redis_clients import RedisClients, index_members
from connectors.omnidesk.channel.redis_switchboard import RedisKeys, reply_lost
from connectors.omnidesk.channel.switchboard import SwitchboardError
from connectors.omnidesk.redis_connection import RedisConnection

logger = logging.getLogger(__name__)

# How long a removal or a release Redis refused is tried again: a drainer's lease lives
# 15 s (outbox.OutboxTimings.lease_ttl); past that it has lapsed, and the removal's
# fencing check would fail anyway.
RELEASE_RETRY_FOR = 15.0


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
    """One process: entries in lists, leases and presence in dicts."""

    def __init__(self) -> None:
        self._entries: Dict[str, List[Tuple[str, str]]] = {}
        self._leases: Dict[str, Tuple[str, float]] = {}
        self._presence: Dict[str, Dict[str, float]] = {}
        self._counter = 0

    async def put(self, conversation_id: str, raw: str) -> str:
        self._counter += 1
        entry_id = f"{self._counter}"
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
            del self._entries[conversation_id]
        return True

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


class RedisOutboxStore(OutboxStore):
    """Redis: a Stream per conversation, a set of conversations with entries, leases, presence.

    Keys (prefix ``omnidesk:``, each of a conversation in its hash slot,
    redis_switchboard.RedisKeys): ``outbox:<conversation>`` (Stream, expires
    ``retention`` plus an hour after its last entry as a safety net; the
    drainer drops and logs older entries first), ``outbox-lease:<conversation>``
    (string, PX), ``presence:<recipient>`` (sorted set: socket id scored by when
    it stops counting), and ``outbox:waiting`` (sets in shards, the conversations
    with entries; kept by commands of their own beside the per-conversation scripts).
    """

    def __init__(
        self,
        redis: Union[RedisClients, RedisConnection, str],
        retention: float,
        prefix: str = "omnidesk:",
        timeout: float = 5.0,
        wait_replicas: int = 0,
        wait_timeout: float = 0.5,
    ) -> None:
        """``redis``: the process's clients (shared with the switchboard), or a connection
        or URL to make clients of its own, closed with it. ``wait_replicas``: how many
        replicas must confirm a put (``WAIT``) within ``wait_timeout`` seconds."""
        self._owns_clients = not isinstance(redis, RedisClients)
        if isinstance(redis, str):
            redis = RedisClients.for_url(redis, timeout)
        elif isinstance(redis, RedisConnection):
            redis = RedisClients(redis, timeout)
        self._clients: RedisClients = redis
        self._redis: Any = redis.data
        self._keys = RedisKeys(prefix)
        self._key_ttl = int(retention) + 3600
        self._wait_replicas = wait_replicas
        self._wait_timeout = wait_timeout
        self._remove = self._redis.register_script(_REMOVE_SCRIPT)
        self._lease = self._redis.register_script(_LEASE_SCRIPT)
        self._release = self._redis.register_script(_RELEASE_SCRIPT)
        self._mark = self._redis.register_script(_MARK_SCRIPT)
        self._present = self._redis.register_script(_PRESENT_SCRIPT)
        # What a drainer could not finish when Redis refused (a failover): per (conversation,
        # lease token), the entries sent but not removed, and whether the lease is still to
        # let go; finished in the background, in that order, once Redis answers.
        self._unfinished: Dict[Tuple[str, str], _Unfinished] = {}
        self._finishing: Set[asyncio.Future[None]] = set()

    def _stream(self, conversation_id: str) -> str:
        return self._keys.of(conversation_id, "outbox")

    def _lease_key(self, conversation_id: str) -> str:
        return self._keys.of(conversation_id, "outbox-lease")

    def _waiting_key(self, conversation_id: str) -> str:
        return self._keys.outbox_waiting(conversation_id)

    def _presence_key(self, recipient_id: str) -> str:
        return self._keys.of(recipient_id, "presence")

    async def _call(self, what: str, coroutine: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await coroutine
        except (RedisError, OSError, asyncio.TimeoutError) as error:
            metrics.switchboard_error(f"outbox_{what}")
            raise SwitchboardError(
                f"outbox {what} failed: {type(error).__name__}: {error}; "
                f"check that Redis ({self._clients.connection.for_logs()}) is reachable"
            ) from error

    def _nudge_channel(self) -> str:
        return self._keys.outbox_nudge

    async def put(self, conversation_id: str, raw: str) -> str:
        """Append the entry; a reply lost after it was sent is resolved by reading back.

        The entry carries a mark of its own (``u``): when the reply is lost (a
        timeout, a connection cut by a dying master), the stream's tail is read for
        it, so an agent's message that was stored is answered ``ok`` rather than
        503 (and would otherwise be sent twice). With ``wait_replicas``, the put's
        writes must reach that many replicas within ``wait_timeout``; when they do
        not, the entry is taken back (unless it was delivered meanwhile) and the
        put fails: the hookpoint answers 503 rather than ``ok`` for a message a
        failover could lose.
        """
        stream = self._stream(conversation_id)
        waiting = self._waiting_key(conversation_id)
        mark = uuid.uuid4().hex
        await self._call("put", self._clients.prepare())
        pipe = self._clients.pipeline()
        pipe.xadd(stream, {"e": raw, "u": mark})
        pipe.expire(stream, self._key_ttl)
        pipe.sadd(waiting, conversation_id)
        # The instance holding the customer's socket may be another one: tell them all
        # (on a Cluster from the stream's node, after the entry).
        self._clients.queue_publish(pipe, self._nudge_channel(), conversation_id, near=stream)
        waits = 0
        if self._wait_replicas > 0:
            waits = self._clients.queue_wait(
                pipe, self._wait_replicas, self._wait_timeout, [stream, waiting]
            )
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
            await self._call("put", self._redis.sadd(waiting, conversation_id))
            return stored
        entry_id = str(results[0])
        if waits:
            confirmed = min(int(copies) for copies in results[-waits:])
            if confirmed < self._wait_replicas:
                await self._withdraw(conversation_id, entry_id, confirmed)
        return entry_id

    async def _withdraw(self, conversation_id: str, entry_id: str, confirmed: int) -> None:
        """Take back an entry too few replicas confirmed; raise, unless it was delivered."""
        metrics.switchboard_error("outbox_put")
        taken_back = int(
            await self._call("put", self._redis.xdel(self._stream(conversation_id), entry_id))
        )
        if not taken_back:
            logger.warning(
                "Outbox put of conversation %s: %d of %d replicas confirmed it within %g s, "
                "but it was delivered meanwhile.",
                conversation_id,
                confirmed,
                self._wait_replicas,
                self._wait_timeout,
            )
            return
        raise SwitchboardError(
            f"outbox put not confirmed: {confirmed} of {self._wait_replicas} replicas "
            f"(redis_wait_replicas) had it within {self._wait_timeout:g} s "
            "(redis_wait_timeout); it was taken back. Check the replicas' link to the master."
        )

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
        waiting = self._waiting_key(conversation_id)
        if int(await self._call("forget", self._redis.xlen(stream))) > 0:
            return
        await self._call("forget", self._redis.srem(waiting, conversation_id))
        if int(await self._call("forget", self._redis.xlen(stream))) > 0:
            await self._call("forget", self._redis.sadd(waiting, conversation_id))

    async def listen(self, on_nudge: Callable[[str], None]) -> None:
        """Hear the nudges on the process's one subscriber (it reconnects by itself; the
        poll finds what was put while it was away)."""
        subscriber = self._clients.subscriber
        subscriber.register(self._nudge_channel(), on_nudge)
        subscriber.start()
        await asyncio.Event().wait()

    async def head(self, conversation_id: str, count: int) -> List[Tuple[str, str]]:
        stream = self._stream(conversation_id)
        rows = await self._call("read", self._redis.xrange(stream, "-", "+", count=count))
        if not rows:
            await self._forget(conversation_id)
        return [(str(entry_id), str(fields.get("e", ""))) for entry_id, fields in rows]

    async def remove(self, conversation_id: str, entry_id: str, token: str) -> bool:
        """Remove a sent entry under the lease; when Redis refuses, raise and keep trying in
        the background (with the same lease), so the new master does not send it again."""
        try:
            left = await self._remove_once(conversation_id, entry_id, token)
        except SwitchboardError:
            self._unfinished_of(conversation_id, token).sent.append(entry_id)
            raise
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
        """Let the lease go; when Redis refuses (failing over), raise, and keep trying in the
        background: a lease the new master holds would keep every drainer off this
        conversation until it lapses."""
        try:
            await self._release_once(conversation_id, token)
        except SwitchboardError:
            self._unfinished_of(conversation_id, token).release = True
            raise

    async def _release_once(self, conversation_id: str, token: str) -> None:
        await self._call(
            "release", self._release(keys=[self._lease_key(conversation_id)], args=[token])
        )

    async def _remove_once(self, conversation_id: str, entry_id: str, token: str) -> int:
        return int(
            await self._call(
                "remove",
                self._remove(
                    keys=[self._stream(conversation_id), self._lease_key(conversation_id)],
                    args=[token, entry_id],
                ),
            )
        )

    def _unfinished_of(self, conversation_id: str, token: str) -> "_Unfinished":
        key = (conversation_id, token)
        unfinished = self._unfinished.get(key)
        if unfinished is None:
            unfinished = self._unfinished[key] = _Unfinished()
            later = asyncio.ensure_future(self._finish_later(conversation_id, token, unfinished))
            self._finishing.add(later)
            later.add_done_callback(self._finishing.discard)
        return unfinished

    async def _finish_later(
        self, conversation_id: str, token: str, unfinished: "_Unfinished"
    ) -> None:
        """Remove what was sent, then let the lease go, once Redis answers again: the entries
        are not sent twice, and the next drainer need not wait for the lease to lapse."""
        deadline = time.monotonic() + RELEASE_RETRY_FOR
        pause = 0.25
        try:
            while time.monotonic() + pause < deadline:
                await asyncio.sleep(pause)
                try:
                    while unfinished.sent:
                        if await self._remove_once(conversation_id, unfinished.sent[0], token) < 0:
                            # The lease lapsed, or the new master never had it: a drainer
                            # may send these again (at least once).
                            unfinished.sent.clear()
                            break
                        unfinished.sent.pop(0)
                    if unfinished.release:
                        await self._release_once(conversation_id, token)
                except SwitchboardError:
                    pause = min(pause * 2, 2.0)
                    continue
                logger.info(
                    "Outbox of conversation %s: what its drainer left at a Redis failure is done.",
                    conversation_id,
                )
                return
            logger.warning(
                "Outbox of conversation %s: %d delivered entries could not be removed after "
                "Redis failed; they may be sent again.",
                conversation_id,
                len(unfinished.sent),
            )
        finally:
            self._unfinished.pop((conversation_id, token), None)

    async def waiting(self) -> List[str]:
        pipe = self._clients.pipeline()
        for shard in self._keys.index_shards("outbox:waiting"):
            pipe.smembers(shard)
        return index_members(await self._call("list", pipe.execute()))

    async def count_waiting(self) -> int:
        conversations = await self.waiting()
        if not conversations:
            return 0
        pipe = self._clients.pipeline()
        for conversation_id in conversations:
            pipe.xlen(self._stream(conversation_id))
        lengths = await self._call("count", pipe.execute())
        return sum(int(length) for length in lengths)

    async def mark_present(self, recipient_id: str, socket_id: str, ttl: float) -> None:
        await self._call(
            "presence",
            self._mark(keys=[self._presence_key(recipient_id)], args=[socket_id, int(ttl * 1000)]),
        )

    async def mark_present_many(self, held: List[Tuple[str, str]], ttl: float) -> None:
        pipe = self._clients.pipeline()
        for recipient_id, socket_id in held:
            self._clients.queue_script(
                pipe, self._mark, [self._presence_key(recipient_id)], [socket_id, int(ttl * 1000)]
            )
        await self._call("presence", pipe.execute())

    async def mark_gone(self, recipient_id: str, socket_id: str) -> None:
        await self._call("presence", self._redis.zrem(self._presence_key(recipient_id), socket_id))

    async def present(self, recipient_id: str) -> bool:
        count = await self._call("presence", self._present(keys=[self._presence_key(recipient_id)]))
        return int(count) > 0

    async def close(self) -> None:
        for later in list(self._finishing):
            later.cancel()
        if self._owns_clients:
            await self._clients.close()


class _Unfinished:
    """What a drainer left when Redis failed: entries sent but not removed, the lease."""

    def __init__(self) -> None:
        self.sent: List[str] = []
        self.release = False


def create_outbox_store(
    redis: Optional[RedisClients],
    retention: float,
    wait_replicas: int = 0,
    wait_timeout: float = 0.5,
) -> OutboxStore:
    """In the process's Redis (the clients it shares with the switchboard); in this
    process when there is none (``memory://``)."""
    if redis is None:
        return InMemoryOutboxStore()
    return RedisOutboxStore(
        redis, retention, wait_replicas=wait_replicas, wait_timeout=wait_timeout
    )
