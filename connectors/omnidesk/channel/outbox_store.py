"""Where outbox entries, drainer leases and socket.io presence live.

``OutboxStore`` is what the outbox (outbox.py: its drainer and presence) asks
of storage: per-conversation ordered entries (each a mapping of text fields),
a fenced drainer lease per conversation taken with the head entry and renewed
with the next one, the conversations with entries waiting, socket.io presence
with an expiry, a nudge to every instance when an entry is put, and, for a
customer who pulls (rest), reading after a cursor, acknowledging up to an id and
the last entry a poll or stream handed out. Entry ids compare in the order the
entries were put (``entry_order``). ``InMemoryOutboxStore`` keeps it in this process (``memory://``);
``RedisOutboxStore`` keeps it beside the switchboard's handoffs, a Stream per
conversation (docs/architecture.md, "The outbox", says why). The switchboard
makes the store (``Switchboard.outbox_store``), so both share one connection
and one key layout.
"""

import abc
import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from connectors.omnidesk import metrics

logger = logging.getLogger(__name__)

# How long a removal or a release Redis refused is tried again: a drainer's lease
# lives 15 s (outbox.OutboxTimings.lease_ttl); past that it has lapsed, and the
# removal's fencing check would fail anyway.
RELEASE_RETRY_FOR = 15.0

# An entry: its id in the store, and its fields.
Row = Tuple[str, Dict[str, str]]

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
    async def put(self, conversation_id: str, fields: Dict[str, str]) -> str:
        """Append one entry; its id. Raises SwitchboardError when it could not be stored."""

    @abc.abstractmethod
    async def take(self, conversation_id: str, token: str, ttl: float) -> Optional[List[Row]]:
        """Take the conversation's drainer lease with its oldest entry, in one step.

        None when another drainer holds the lease. An empty list when nothing
        waits: the lease is not kept, and the conversation leaves the waiting set.
        """

    @abc.abstractmethod
    async def remove(
        self, conversation_id: str, entry_id: str, token: str, ttl: float
    ) -> Optional[List[Row]]:
        """Remove an entry while ``token`` holds the lease, and renew it with the next entry.

        None when the lease is no longer the caller's (nothing removed). An empty
        list when the outbox is empty now: the lease is released.
        """

    @abc.abstractmethod
    async def release(self, conversation_id: str, token: str) -> None:
        """Give the lease up, if ``token`` still holds it."""

    @abc.abstractmethod
    async def peek(self, conversation_id: str, count: int) -> List[Row]:
        """The oldest ``count`` entries, oldest first, taking nothing."""

    @abc.abstractmethod
    async def waiting(self) -> List[str]:
        """The conversations that may have entries waiting."""

    @abc.abstractmethod
    async def read_after(self, conversation_id: str, after: Optional[str], count: int) -> List[Row]:
        """Up to ``count`` entries with ids after ``after`` (all with None), oldest first."""

    @abc.abstractmethod
    async def acknowledge(self, conversation_id: str, up_to: str) -> List[Row]:
        """Remove every entry with an id up to ``up_to``, whoever drains; the entries removed."""

    @abc.abstractmethod
    async def note_handed(self, conversation_id: str, entry_id: str) -> None:
        """A poll or stream handed the customer's client the entries up to ``entry_id``."""

    @abc.abstractmethod
    async def handed(self, conversation_id: str) -> Optional[str]:
        """The last entry id a poll or stream handed out, or None."""

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
    """One process: entries in lists, leases and presence in dicts.

    Entry ids have the Redis Streams' shape and order (milliseconds, then a
    sequence within the millisecond, never going back), so a customer's
    cursor reads the same with either store.
    """

    def __init__(self) -> None:
        self._entries: Dict[str, List[Row]] = {}
        self._leases: Dict[str, Tuple[str, float]] = {}
        self._presence: Dict[str, Dict[str, float]] = {}
        self._handed: Dict[str, str] = {}
        self._last_id: Tuple[int, int] = (0, 0)

    def _new_id(self) -> str:
        now = int(time.time() * 1000)
        milliseconds, sequence = self._last_id
        self._last_id = (now, 0) if now > milliseconds else (milliseconds, sequence + 1)
        return f"{self._last_id[0]}-{self._last_id[1]}"

    async def put(self, conversation_id: str, fields: Dict[str, str]) -> str:
        entry_id = self._new_id()
        self._entries.setdefault(conversation_id, []).append((entry_id, dict(fields)))
        return entry_id

    def _forget(self, conversation_id: str) -> None:
        # With nothing waiting, what was handed out no longer matters.
        self._entries.pop(conversation_id, None)
        self._handed.pop(conversation_id, None)

    def lease_if_free(self, conversation_id: str, token: str, ttl: float) -> bool:
        held = self._leases.get(conversation_id)
        if held is not None and held[0] != token and held[1] > time.monotonic():
            return False
        self._leases[conversation_id] = (token, time.monotonic() + ttl)
        return True

    def _holds(self, conversation_id: str, token: str) -> bool:
        held = self._leases.get(conversation_id)
        return held is not None and held[0] == token and held[1] > time.monotonic()

    def _head(self, conversation_id: str, ttl: float, token: str) -> List[Row]:
        entries = self._entries.get(conversation_id)
        if not entries:
            self._forget(conversation_id)
            self._leases.pop(conversation_id, None)
            return []
        self._leases[conversation_id] = (token, time.monotonic() + ttl)
        return [entries[0]]

    async def take(self, conversation_id: str, token: str, ttl: float) -> Optional[List[Row]]:
        if not self.lease_if_free(conversation_id, token, ttl):
            return None
        return self._head(conversation_id, ttl, token)

    async def remove(
        self, conversation_id: str, entry_id: str, token: str, ttl: float
    ) -> Optional[List[Row]]:
        if not self._holds(conversation_id, token):
            return None
        entries = self._entries.get(conversation_id, [])
        self._entries[conversation_id] = [e for e in entries if e[0] != entry_id]
        return self._head(conversation_id, ttl, token)

    async def release(self, conversation_id: str, token: str) -> None:
        held = self._leases.get(conversation_id)
        if held is not None and held[0] == token:
            del self._leases[conversation_id]

    async def peek(self, conversation_id: str, count: int) -> List[Row]:
        return list(self._entries.get(conversation_id, [])[:count])

    async def waiting(self) -> List[str]:
        return list(self._entries)

    async def count_waiting(self) -> int:
        return sum(len(entries) for entries in self._entries.values())

    async def read_after(self, conversation_id: str, after: Optional[str], count: int) -> List[Row]:
        entries = self._entries.get(conversation_id, [])
        if after is not None:
            cursor = entry_order(after)
            entries = [entry for entry in entries if entry_order(entry[0]) > cursor]
        return list(entries[:count])

    async def acknowledge(self, conversation_id: str, up_to: str) -> List[Row]:
        entries = self._entries.get(conversation_id, [])
        cursor = entry_order(up_to)
        kept = [entry for entry in entries if entry_order(entry[0]) > cursor]
        if kept:
            self._entries[conversation_id] = kept
        else:
            self._forget(conversation_id)
        return [entry for entry in entries if entry_order(entry[0]) <= cursor]

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


# Append an entry, keep the stream a while, note the conversation as waiting (in
# its tag's set, the stream's slot) and nudge every instance. KEYS: stream,
# waiting set; ARGV: ttl s, conversation, nudge channel, then field, value, ...
PUT_SCRIPT = """
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return id
"""

# Take the lease with the oldest entry. KEYS: stream, lease, waiting set; ARGV:
# token, lease ms, conversation. false: another holds it; {}: nothing waits.
_TAKE_SCRIPT = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return false end
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #head == 0 then
  if holder then redis.call('DEL', KEYS[2]) end
  redis.call('SREM', KEYS[3], ARGV[3])
  return {}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return head
"""

# Remove an entry only while the caller's token holds the lease (the fencing
# check), and renew the lease with the next entry, or release it when the
# outbox is empty. KEYS: stream, lease, waiting set; ARGV: token, entry id,
# lease ms, conversation. false: the lease is not the caller's.
_REMOVE_SCRIPT = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
redis.call('XDEL', KEYS[1], ARGV[2])
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #head == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[4])
  return {}
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return head
"""

# Remove every entry up to an id, whoever drains: the customer's client says it
# has them. An empty stream stays until it expires, so the ids of the entries
# put after it keep growing (a stream made anew would take its ids from the
# clock again). KEYS: stream, waiting set; ARGV: the id, conversation. Returns
# the entries removed.
_ACKNOWLEDGE_SCRIPT = """
local rows = redis.call('XRANGE', KEYS[1], '-', ARGV[1])
for _, row in ipairs(rows) do redis.call('XDEL', KEYS[1], row[1]) end
if redis.call('XLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return rows
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


def rows_of(reply: Any) -> List[Row]:
    """Stream entries as Redis answers them ([id, [field, value, ...]] or [id, {...}])."""
    rows: List[Row] = []
    for entry_id, fields in reply or []:
        if isinstance(fields, dict):
            pairs = {str(k): str(v) for k, v in fields.items()}
        else:
            items = list(fields)
            pairs = {str(items[i]): str(items[i + 1]) for i in range(0, len(items) - 1, 2)}
        rows.append((str(entry_id), pairs))
    return rows


class RedisOutboxStore(OutboxStore):
    """Redis: a Stream per conversation, waiting sets per tag, leases, presence.

    Keys (redis_switchboard.RedisKeys; every one of a conversation in its hash
    slot): ``outbox:<conversation>`` (Stream, expires ``retention`` plus an hour
    after its last entry as a safety net; the drainer drops and logs older
    entries first), ``outbox-lease:<conversation>`` (string, PX),
    ``presence:<recipient>`` (sorted set: socket id scored by when it stops
    counting), ``outbox-handed:<conversation>`` (string: the last entry id a
    poll or stream handed out, expiring with the stream), and the tag's
    ``outbox-waiting`` set of conversations with entries.
    """

    def __init__(self, board: Any, retention: float) -> None:
        # The switchboard's clients (redis_clients.py), key names, call wrapper
        # (which turns a Redis failure into SwitchboardError) and WAIT settings:
        # redis_switchboard.py.
        self._board = board
        self._clients: Any = board.clients
        self._redis: Any = board.redis
        self._keys = board.keys
        self._key_ttl = int(retention) + 3600
        self._put = self._redis.register_script(PUT_SCRIPT)
        self._take = self._redis.register_script(_TAKE_SCRIPT)
        self._remove = self._redis.register_script(_REMOVE_SCRIPT)
        self._release = self._redis.register_script(_RELEASE_SCRIPT)
        self._mark = self._redis.register_script(_MARK_SCRIPT)
        self._present = self._redis.register_script(_PRESENT_SCRIPT)
        self._acknowledge = self._redis.register_script(_ACKNOWLEDGE_SCRIPT)
        self._note_handed = self._redis.register_script(_HANDED_SCRIPT)
        # What a drainer could not finish when Redis refused (a failover): per
        # (conversation, lease token), the entries sent but not removed, and whether
        # the lease is still to let go; finished in the background, in that order,
        # once Redis answers.
        self._unfinished: Dict[Tuple[str, str], _Unfinished] = {}
        self._finishing: Set[asyncio.Future[None]] = set()

    @property
    def key_ttl(self) -> int:
        return self._key_ttl

    def _drain_keys(self, conversation_id: str) -> List[str]:
        keys = self._keys
        return [
            keys.of(conversation_id, "outbox"),
            keys.of(conversation_id, "outbox-lease"),
            keys.per_tag_of(conversation_id, "outbox-waiting"),
        ]

    async def _call(self, what: str, coroutine: Any) -> Any:
        return await self._board.call(f"outbox_{what}", coroutine)

    async def put(self, conversation_id: str, fields: Dict[str, str]) -> str:
        """Append the entry; a reply lost after it was sent is resolved by reading back.

        The entry carries a mark of its own (``u``): when the reply is lost (a
        timeout, a connection cut by a dying master), the stream's tail is read
        for it, so a message that was stored is not answered as failed (and sent
        twice when it is retried). With ``redis_wait_replicas`` the put is
        confirmed (``WAIT``) before it counts as stored (``confirmed``).
        """
        stream = self._keys.of(conversation_id, "outbox")
        mark = uuid.uuid4().hex
        args: List[Any] = [self._key_ttl, conversation_id, self._keys.nudge]
        for name, value in {**fields, "u": mark}.items():
            args.extend([name, value])
        keys = [stream, self._keys.per_tag_of(conversation_id, "outbox-waiting")]
        try:
            if self._board.wait_replicas > 0:
                answers = await self.confirmed(self._put, keys, args)
                entry_id = str(answers[0])
                await self.withdrawn_unless_confirmed(conversation_id, entry_id, answers)
                return entry_id
            return str(await self._call("put", self._put(keys=keys, args=args)))
        except Exception as error:
            stored = await self.stored(stream, mark) if self._board.reply_lost(error) else None
            if stored is None:
                raise
            logger.warning(
                "Outbox put of conversation %s: the reply was lost, the entry is stored.",
                conversation_id,
            )
            return stored

    async def confirmed(self, script: Any, keys: List[str], args: List[Any]) -> List[Any]:
        """Run a writing script, then ``WAIT`` for the replicas on the same connection.

        The answers: the script's, then how many replicas confirmed (one per node
        that took the writes; on a Cluster the keys' slot's node).
        """
        await self._call("put", self._clients.prepare())
        pipe = self._clients.pipeline()
        self._clients.queue_script(pipe, script, keys, args)
        self._clients.queue_wait(
            pipe, self._board.wait_replicas, self._board.wait_timeout, keys[:1]
        )
        return list(await self._call("put", pipe.execute()))

    async def withdrawn_unless_confirmed(
        self, conversation_id: str, entry_id: str, answers: List[Any]
    ) -> None:
        """Take back an entry too few replicas confirmed, and raise; unless it was delivered.

        A failover could lose such an entry after the hookpoint said ``ok``: the
        hookpoint answers 503 instead, and Omnidesk sends it again.
        """
        confirmed = int(answers[-1])
        wanted = self._board.wait_replicas
        if confirmed >= wanted:
            return
        metrics.switchboard_error("outbox_put")
        taken_back = int(
            await self._call(
                "put", self._redis.xdel(self._keys.of(conversation_id, "outbox"), entry_id)
            )
        )
        if not taken_back:
            logger.warning(
                "Outbox put of conversation %s: %d of %d replicas confirmed it within %g s, "
                "but it was delivered meanwhile.",
                conversation_id,
                confirmed,
                wanted,
                self._board.wait_timeout,
            )
            return
        raise self._board.error_class(
            f"outbox put not confirmed: {confirmed} of {wanted} replicas "
            f"(redis_wait_replicas) had it within {self._board.wait_timeout:g} s "
            "(redis_wait_timeout); it was taken back. Check the replicas' link to the master."
        )

    async def stored(self, stream: str, mark: str) -> Optional[str]:
        """The id of the entry carrying ``mark`` among the stream's newest, or None."""
        rows = await self._call("put", self._redis.xrevrange(stream, "+", "-", count=100))
        for entry_id, fields in rows_of(rows):
            if fields.get("u") == mark:
                return entry_id
        return None

    async def take(self, conversation_id: str, token: str, ttl: float) -> Optional[List[Row]]:
        head = await self._call(
            "take",
            self._take(
                keys=self._drain_keys(conversation_id),
                args=[token, int(ttl * 1000), conversation_id],
            ),
        )
        return None if head is None else rows_of(head)

    async def remove(
        self, conversation_id: str, entry_id: str, token: str, ttl: float
    ) -> Optional[List[Row]]:
        """Remove a sent entry under the lease; when Redis refuses, raise and keep trying in
        the background (with the same lease), so the new master does not send it again."""
        try:
            return await self._remove_once(conversation_id, entry_id, token, ttl)
        except Exception:
            self._unfinished_of(conversation_id, token, ttl).sent.append(entry_id)
            raise

    async def _remove_once(
        self, conversation_id: str, entry_id: str, token: str, ttl: float
    ) -> Optional[List[Row]]:
        head = await self._call(
            "remove",
            self._remove(
                keys=self._drain_keys(conversation_id),
                args=[token, entry_id, int(ttl * 1000), conversation_id],
            ),
        )
        return None if head is None else rows_of(head)

    async def release(self, conversation_id: str, token: str) -> None:
        """Let the lease go; when Redis refuses (failing over), raise, and keep trying in the
        background: a lease the new master holds would keep every drainer off this
        conversation until it lapses."""
        try:
            await self._release_once(conversation_id, token)
        except Exception:
            self._unfinished_of(conversation_id, token, RELEASE_RETRY_FOR).release = True
            raise

    async def _release_once(self, conversation_id: str, token: str) -> None:
        await self._call(
            "release",
            self._release(keys=[self._keys.of(conversation_id, "outbox-lease")], args=[token]),
        )

    def _unfinished_of(self, conversation_id: str, token: str, ttl: float) -> "_Unfinished":
        key = (conversation_id, token)
        unfinished = self._unfinished.get(key)
        if unfinished is None:
            unfinished = self._unfinished[key] = _Unfinished(ttl=ttl)
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
                        following = await self._remove_once(
                            conversation_id, unfinished.sent[0], token, unfinished.ttl
                        )
                        if following is None:
                            # The lease lapsed, or the new master never had it: a drainer
                            # may send these again (at least once).
                            unfinished.sent.clear()
                            break
                        unfinished.sent.pop(0)
                    if unfinished.release:
                        await self._release_once(conversation_id, token)
                except Exception:  # Redis still failing over: try again after a pause
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

    async def peek(self, conversation_id: str, count: int) -> List[Row]:
        rows = await self._call(
            "read",
            self._redis.xrange(self._keys.of(conversation_id, "outbox"), "-", "+", count=count),
        )
        return rows_of(rows)

    async def waiting(self) -> List[str]:
        pipe = self._clients.pipeline()
        for key in self._keys.every_tag("outbox-waiting"):
            pipe.smembers(key)
        members = await self._call("list", pipe.execute())
        return sorted({str(member) for shard in members for member in shard})

    async def count_waiting(self) -> int:
        conversations = await self.waiting()
        if not conversations:
            return 0
        pipe = self._clients.pipeline()
        for conversation_id in conversations:
            pipe.xlen(self._keys.of(conversation_id, "outbox"))
        lengths = await self._call("count", pipe.execute())
        return sum(int(length) for length in lengths)

    async def read_after(self, conversation_id: str, after: Optional[str], count: int) -> List[Row]:
        start = "-" if after is None else _next_id(after)
        rows = await self._call(
            "read",
            self._redis.xrange(self._keys.of(conversation_id, "outbox"), start, "+", count=count),
        )
        return rows_of(rows)

    async def acknowledge(self, conversation_id: str, up_to: str) -> List[Row]:
        keys = self._keys
        removed = await self._call(
            "acknowledge",
            self._acknowledge(
                keys=[
                    keys.of(conversation_id, "outbox"),
                    keys.per_tag_of(conversation_id, "outbox-waiting"),
                ],
                args=[up_to, conversation_id],
            ),
        )
        return rows_of(removed)

    async def note_handed(self, conversation_id: str, entry_id: str) -> None:
        await self._call(
            "handed",
            self._note_handed(
                keys=[self._keys.of(conversation_id, "outbox-handed")],
                args=[entry_id, self._key_ttl * 1000],
            ),
        )

    async def handed(self, conversation_id: str) -> Optional[str]:
        value = await self._call(
            "handed", self._redis.get(self._keys.of(conversation_id, "outbox-handed"))
        )
        return None if value is None else str(value)

    async def mark_present(self, recipient_id: str, socket_id: str, ttl: float) -> None:
        await self._call(
            "presence",
            self._mark(
                keys=[self._keys.of(recipient_id, "presence")], args=[socket_id, int(ttl * 1000)]
            ),
        )

    async def mark_present_many(self, held: List[Tuple[str, str]], ttl: float) -> None:
        pipe = self._clients.pipeline()
        for recipient_id, socket_id in held:
            self._clients.queue_script(
                pipe,
                self._mark,
                [self._keys.of(recipient_id, "presence")],
                [socket_id, int(ttl * 1000)],
            )
        await self._call("presence", pipe.execute())

    async def mark_gone(self, recipient_id: str, socket_id: str) -> None:
        await self._call(
            "presence", self._redis.zrem(self._keys.of(recipient_id, "presence"), socket_id)
        )

    async def present(self, recipient_id: str) -> bool:
        count = await self._call(
            "presence", self._present(keys=[self._keys.of(recipient_id, "presence")])
        )
        return int(count) > 0

    async def listen(self, on_nudge: Callable[[str], None]) -> None:
        """Hear the nudges on the process's one subscriber (it reconnects by itself; the
        poll finds what was put while it was away)."""
        subscriber = self._clients.subscriber
        subscriber.register(self._keys.nudge, on_nudge)
        subscriber.start()
        await asyncio.Event().wait()

    async def close(self) -> None:
        for finishing in list(self._finishing):
            finishing.cancel()


@dataclass
class _Unfinished:
    """What a drainer left when Redis failed: entries sent but not removed, and its lease."""

    ttl: float
    sent: List[str] = field(default_factory=list)
    release: bool = False
