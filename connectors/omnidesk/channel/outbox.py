"""The outbox: everything the connector sends a customer in a handoff, in order, kept until taken.

Agent text, agent files, the agent's typing, the connector's notices and the
end-of-chat message are put in one outbox per conversation before a hookpoint
answers ``ok``. A drainer takes them off one at a time, oldest first, and
removes an entry only once the customer's channel took it: for socket.io, it
is sent by the instance a socket of that session is connected to (``Presence``;
a put nudges every instance through Redis); for the callback channel and any
other, the send must succeed. What the
channel refused stays and is tried again with backoff; what waits longer than
``outbox_retention`` is dropped and logged with its chat id.

One drainer per conversation at a time, across instances: a short lease per
conversation, and an entry is removed only while its drainer still holds the
lease (a fencing check in the same Redis script). With ``memory://`` both the
entries and the lease live in this process; with the Redis switchboard they
live in Redis, so the instance that answers a hookpoint need not be the one
holding the customer's socket. docs/architecture.md ("The outbox") says why a
Stream.

Nothing here imports rasa or sanic.
"""

import abc
import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Set, Tuple

from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.sides import CustomerLine, FileLink
from connectors.omnidesk.channel.switchboard import Handoff, Switchboard, SwitchboardError

logger = logging.getLogger(__name__)

DELIVERY_TIMEOUT = 10.0  # seconds one entry may take to reach the customer's channel
LEASE_TTL = 15.0  # seconds a drainer holds a conversation; more than DELIVERY_TIMEOUT
POLL_INTERVAL = 0.5  # seconds between looks over the conversations with waiting entries
AWAY_RECHECK = 30.0  # seconds before an absent customer's outbox is looked at again unasked
HEAD_BATCH = 20  # entries read per round trip
PRESENCE_TTL = 6.0  # seconds a socket counts as connected without a refresh
PRESENCE_REFRESH = 2.0  # seconds between refreshes by the instance holding the socket
SHUTDOWN_GRACE = 5.0  # seconds drainers under way may finish at shutdown
TYPING_STALE = 10.0  # seconds after which a waiting typing indicator means nothing
ENDED_MEMORY = 300.0  # seconds the chat id of an ended handoff is kept for late notices


# -- what is sent -----------------------------------------------------------------


@dataclass(frozen=True)
class ToCustomer:
    """One thing for the customer: text (agent's or a notice), an agent file, or typing."""

    kind: str  # "text" | "file" | "typing"
    text: str = ""
    file: Optional[FileLink] = None
    typing: bool = False
    agent: Optional[AgentIdentity] = None

    def describe(self) -> str:
        return {"text": "message", "file": "agent file"}.get(self.kind, "agent typing")

    def to_dict(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"kind": self.kind}
        if self.text:
            data["text"] = self.text
        if self.file is not None:
            data["file"] = {
                "url": self.file.url,
                "filename": self.file.filename,
                "is_image": self.file.is_image,
            }
        if self.kind == "typing":
            data["typing"] = self.typing
        if self.agent is not None:
            data["agent"] = {"name": self.agent.name, "picture": self.agent.picture}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ToCustomer":
        file = data.get("file")
        agent = data.get("agent")
        return cls(
            kind=str(data["kind"]),
            text=str(data.get("text", "")),
            file=(
                FileLink(str(file["url"]), str(file["filename"]), bool(file["is_image"]))
                if isinstance(file, Mapping)
                else None
            ),
            typing=bool(data.get("typing", False)),
            agent=(
                AgentIdentity(name=agent.get("name"), picture=agent.get("picture"))
                if isinstance(agent, Mapping)
                else None
            ),
        )

    @classmethod
    def from_json(cls, raw: str) -> "ToCustomer":
        return cls.from_dict(json.loads(raw))


async def send_to(line: CustomerLine, conversation_id: str, item: ToCustomer) -> None:
    """Send ``item`` on ``line``; raises whatever the customer's channel raised."""
    if item.kind == "text":
        await line.send_text(conversation_id, item.text, item.agent)
    elif item.kind == "file" and item.file is not None:
        await line.send_file(conversation_id, item.file, item.agent)
    elif not await line.send_typing(conversation_id, item.typing):
        logger.debug("The channel of conversation %s cannot show typing; dropped.", conversation_id)


@dataclass(frozen=True)
class OutboxEntry:
    """One waiting item, with what is needed to send it after the handoff is gone."""

    conversation_id: str
    channel: str
    chat_session_id: str
    stored_at: float
    item: ToCustomer

    def to_json(self) -> str:
        return json.dumps(
            {
                "c": self.conversation_id,
                "ch": self.channel,
                "chat": self.chat_session_id,
                "at": self.stored_at,
                "item": self.item.to_dict(),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, raw: str) -> "OutboxEntry":
        data = json.loads(raw)
        return cls(
            conversation_id=str(data["c"]),
            channel=str(data["ch"]),
            chat_session_id=str(data["chat"]),
            stored_at=float(data["at"]),
            item=ToCustomer.from_dict(data["item"]),
        )


# -- where entries, leases and presence live ----------------------------------------


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
# check), and forget the conversation once its stream is empty.
_REMOVE_SCRIPT = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[3], ARGV[3])
end
return 1
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

_FORGET_EMPTY_SCRIPT = """
if redis.call('XLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return 1
"""


class RedisOutboxStore(OutboxStore):
    """Redis: a Stream per conversation, a set of conversations with entries, leases, presence.

    Keys (prefix ``omnidesk:``): ``outbox:<conversation>`` (Stream, expires
    ``retention`` plus an hour after its last entry as a safety net; the
    drainer drops and logs older entries first), ``outbox:waiting`` (set),
    ``outbox-lease:<conversation>`` (string, PX), ``presence:<recipient>``
    (sorted set: socket id scored by when it stops counting).
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
        self._prefix = prefix
        self._key_ttl = int(retention) + 3600
        self._remove = self._redis.register_script(_REMOVE_SCRIPT)
        self._lease = self._redis.register_script(_LEASE_SCRIPT)
        self._release = self._redis.register_script(_RELEASE_SCRIPT)
        self._mark = self._redis.register_script(_MARK_SCRIPT)
        self._present = self._redis.register_script(_PRESENT_SCRIPT)
        self._forget_empty = self._redis.register_script(_FORGET_EMPTY_SCRIPT)

    def _stream(self, conversation_id: str) -> str:
        return f"{self._prefix}outbox:{conversation_id}"

    def _lease_key(self, conversation_id: str) -> str:
        return f"{self._prefix}outbox-lease:{conversation_id}"

    def _waiting_key(self) -> str:
        return f"{self._prefix}outbox:waiting"

    def _presence_key(self, recipient_id: str) -> str:
        return f"{self._prefix}presence:{recipient_id}"

    async def _call(self, what: str, coroutine: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await coroutine
        except (RedisError, OSError, asyncio.TimeoutError) as error:
            raise SwitchboardError(
                f"outbox {what} failed: {type(error).__name__}: {error}; "
                "check that Redis at OMNIDESK_SWITCHBOARD_URL is reachable"
            ) from error

    def _nudge_channel(self) -> str:
        return f"{self._prefix}outbox:nudge"

    async def put(self, conversation_id: str, raw: str) -> str:
        stream = self._stream(conversation_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(stream, {"e": raw})
        pipe.sadd(self._waiting_key(), conversation_id)
        pipe.expire(stream, self._key_ttl)
        # The instance holding the customer's socket may be another one: tell them all.
        pipe.publish(self._nudge_channel(), conversation_id)
        results = await self._call("put", pipe.execute())
        return str(results[0])

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
            await self._call(
                "forget",
                self._forget_empty(keys=[stream, self._waiting_key()], args=[conversation_id]),
            )
        return [(str(entry_id), str(fields.get("e", ""))) for entry_id, fields in rows]

    async def remove(self, conversation_id: str, entry_id: str, token: str) -> bool:
        removed = await self._call(
            "remove",
            self._remove(
                keys=[
                    self._stream(conversation_id),
                    self._lease_key(conversation_id),
                    self._waiting_key(),
                ],
                args=[token, entry_id, conversation_id],
            ),
        )
        return bool(int(removed))

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


# -- socket.io presence, kept fresh by the instance holding the socket ------------------


class Presence:
    """Which socket.io sessions have a socket connected, as every instance sees it.

    The instance holding a socket marks it present with an expiry and renews it
    every PRESENCE_REFRESH seconds; a crashed instance stops renewing, so its
    sockets stop counting within PRESENCE_TTL. ``on_back`` hears a session that
    (re)joined, so what waits for it is sent.
    """

    def __init__(self) -> None:
        self.store: Optional[OutboxStore] = None
        self.on_back: Optional[Callable[[str], None]] = None
        self._sockets: Dict[str, Set[str]] = {}  # socket id -> recipients it stands for
        self._recipients: Dict[str, Set[str]] = {}  # recipient -> its socket ids here
        self._refreshing: Optional[asyncio.Task[None]] = None

    def start(self, store: OutboxStore, on_back: Callable[[str], None]) -> None:
        self.store = store
        self.on_back = on_back
        self._refreshing = asyncio.ensure_future(self._refresh())

    async def stop(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refreshing
            self._refreshing = None
        store = self.store
        if store is not None:
            for socket_id, recipients in list(self._sockets.items()):
                for recipient in recipients:
                    await _logged(store.mark_gone(recipient, socket_id), "presence", recipient)
        self._sockets.clear()
        self._recipients.clear()
        self.store = None

    async def joined(self, recipient_id: str, socket_id: str) -> None:
        self._sockets.setdefault(socket_id, set()).add(recipient_id)
        self._recipients.setdefault(recipient_id, set()).add(socket_id)
        store = self.store
        if store is None:
            return
        await _logged(
            store.mark_present(recipient_id, socket_id, PRESENCE_TTL), "presence", recipient_id
        )
        if self.on_back is not None:
            self.on_back(recipient_id)

    async def left(self, socket_id: str) -> None:
        recipients = self._sockets.pop(socket_id, set())
        for recipient in recipients:
            sockets = self._recipients.get(recipient, set())
            sockets.discard(socket_id)
            if not sockets:
                self._recipients.pop(recipient, None)
        store = self.store
        if store is None:
            return
        for recipient in recipients:
            await _logged(store.mark_gone(recipient, socket_id), "presence", recipient)

    def here(self, recipient_id: str) -> bool:
        """Whether a socket of ``recipient_id`` is connected to this process."""
        return bool(self._recipients.get(recipient_id))

    async def present(self, recipient_id: str) -> bool:
        """Whether a socket of ``recipient_id`` is connected to some instance."""
        if self.store is None:
            return False
        return await self.store.present(recipient_id)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_REFRESH)
            store = self.store
            if store is None:
                continue
            held = [(r, sid) for sid, rs in list(self._sockets.items()) for r in rs]
            if not held:
                continue
            try:
                await store.mark_present_many(held, PRESENCE_TTL)
            except SwitchboardError as error:
                logger.error(
                    "Could not renew the presence of %d socket.io sessions: %s", len(held), error
                )


async def _logged(step: Awaitable[None], what: str, conversation_id: str) -> None:
    try:
        await step
    except SwitchboardError as error:
        logger.error("Could not update the %s of conversation %s: %s", what, conversation_id, error)


# -- the outbox ----------------------------------------------------------------------


class Outbox:
    """Puts what the customer is sent in order, and drains it when their channel takes it."""

    def __init__(
        self,
        store: OutboxStore,
        lines: Mapping[str, CustomerLine],
        switchboard: Switchboard,
        retention: float,
        backoff_base: float,
        backoff_max: float,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.store = store
        self.lines = dict(lines)
        self.switchboard = switchboard
        self.retention = retention
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.poll_interval = poll_interval
        self._drainers: Dict[str, asyncio.Task[None]] = {}
        self._again: Set[str] = set()
        self._failures: Dict[str, int] = {}
        self._not_before: Dict[str, float] = {}  # monotonic: retry after backoff, or away
        self._ended: Dict[str, Tuple[str, float]] = {}  # conversation -> (chat, when)
        self._polling: Optional[asyncio.Task[None]] = None
        self._poll_failing = False
        self._presence: Optional[Presence] = None
        self._listening: Optional[asyncio.Task[None]] = None

    # -- putting -----------------------------------------------------------------

    async def put(
        self, conversation_id: str, channel: str, chat_session_id: str, item: ToCustomer
    ) -> None:
        """Store ``item`` for the customer, then start draining; SwitchboardError if not stored."""
        entry = OutboxEntry(conversation_id, channel, chat_session_id, time.time(), item)
        await self.store.put(conversation_id, entry.to_json())
        logger.debug(
            "Outbox of conversation %s (chat %s): %s stored.",
            conversation_id,
            chat_session_id,
            item.describe(),
        )
        self.kick(conversation_id)

    def lines_for_relay(self) -> Dict[str, CustomerLine]:
        """Lines that put into this outbox, for the relay's notices."""
        return {name: OutboxLine(self, name) for name in self.lines}

    async def chat_of(self, conversation_id: str) -> str:
        """The chat id of the conversation's handoff, or of the one that just ended."""
        try:
            handoff = await self.switchboard.get(conversation_id)
        except SwitchboardError:
            handoff = None
        if handoff is not None:
            return handoff.chat_session_id
        ended = self._ended.get(conversation_id)
        return ended[0] if ended is not None else "unknown"

    def note_ended(self, handoff: Handoff) -> None:
        """Remember an ended chat's id a while: its end-of-chat notice is put after the end."""
        now = time.monotonic()
        self._ended[handoff.conversation_id] = (handoff.chat_session_id, now)
        for conversation_id, (_, when) in list(self._ended.items()):
            if now - when > ENDED_MEMORY:
                del self._ended[conversation_id]

    # -- draining ----------------------------------------------------------------

    def kick(self, conversation_id: str) -> None:
        """Drain the conversation's outbox now (a drainer under way goes round once more)."""
        self._not_before.pop(conversation_id, None)
        self._failures.pop(conversation_id, None)
        self._start_drainer(conversation_id)

    def _start_drainer(self, conversation_id: str) -> None:
        running = self._drainers.get(conversation_id)
        if running is not None and not running.done():
            self._again.add(conversation_id)
            return
        task = asyncio.ensure_future(self._drain_loop(conversation_id))
        self._drainers[conversation_id] = task

        def done(finished: "asyncio.Task[None]") -> None:
            if self._drainers.get(conversation_id) is finished:
                del self._drainers[conversation_id]

        task.add_done_callback(done)

    async def _drain_loop(self, conversation_id: str) -> None:
        while True:
            self._again.discard(conversation_id)
            try:
                await self._drain(conversation_id)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.error(
                    "Outbox of conversation %s could not be drained now: %s: %s",
                    conversation_id,
                    type(error).__name__,
                    error,
                )
                self._back_off(conversation_id)
                return
            if conversation_id not in self._again:
                return

    async def _drain(self, conversation_id: str) -> None:
        token = uuid.uuid4().hex
        if not await self.store.lease(conversation_id, token, LEASE_TTL):
            # Another drainer has it; it goes on until the outbox is empty, and the
            # poll looks again in case it had just finished.
            return
        try:
            while True:
                rows = await self.store.head(conversation_id, HEAD_BATCH)
                if not rows:
                    self._failures.pop(conversation_id, None)
                    return
                for entry_id, raw in rows:
                    if not await self._take(conversation_id, entry_id, raw, token):
                        return
                    if not await self.store.lease(conversation_id, token, LEASE_TTL):
                        return
        finally:
            try:
                await self.store.release(conversation_id, token)
            except SwitchboardError as error:
                logger.warning(
                    "Outbox lease of conversation %s not released (it expires on its own): %s",
                    conversation_id,
                    error,
                )

    async def _take(self, conversation_id: str, entry_id: str, raw: str, token: str) -> bool:
        """Send one entry and remove it; False when draining stops here (the entry waits)."""
        try:
            entry = OutboxEntry.from_json(raw)
        except (ValueError, KeyError, TypeError) as error:
            logger.error(
                "Outbox of conversation %s holds an entry this version cannot read (%s); dropped.",
                conversation_id,
                error,
            )
            return await self.store.remove(conversation_id, entry_id, token)
        age = time.time() - entry.stored_at
        if age > self.retention:
            logger.warning(
                "Outbox of conversation %s (chat %s): %s waited %.0f s, longer than "
                "outbox_retention (%.0f s); dropped undelivered.",
                conversation_id,
                entry.chat_session_id,
                entry.item.describe(),
                age,
                self.retention,
            )
            return await self.store.remove(conversation_id, entry_id, token)
        if entry.item.kind == "typing" and age > TYPING_STALE:
            # The agent's typing of minutes ago, shown to a customer who came back, would lie.
            logger.debug("Outbox of conversation %s: stale agent typing dropped.", conversation_id)
            return await self.store.remove(conversation_id, entry_id, token)
        line = self.lines.get(entry.channel)
        if line is None:
            logger.error(
                "No wrapped channel named %s for conversation %s (chat %s): %s dropped. "
                "Add it to customer_channels again.",
                entry.channel,
                conversation_id,
                entry.chat_session_id,
                entry.item.describe(),
            )
            return await self.store.remove(conversation_id, entry_id, token)
        if not await line.reachable(conversation_id):
            presence = self._presence
            if presence is not None and await presence.present(conversation_id):
                # The instance holding the socket drains it: it heard the put's nudge.
                logger.debug(
                    "Outbox of conversation %s: its socket is on another instance.",
                    conversation_id,
                )
            else:
                logger.info(
                    "Outbox of conversation %s (chat %s): the customer is not connected; "
                    "%s waits for them.",
                    conversation_id,
                    entry.chat_session_id,
                    entry.item.describe(),
                )
            self._not_before[conversation_id] = time.monotonic() + AWAY_RECHECK
            return False
        try:
            await asyncio.wait_for(
                send_to(line, conversation_id, entry.item), timeout=DELIVERY_TIMEOUT
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:
            delay = self._back_off(conversation_id)
            logger.error(
                "Could not deliver %s to conversation %s (chat %s): %s: %s; it stays in "
                "the outbox, next try in %.1f s.",
                entry.item.describe(),
                conversation_id,
                entry.chat_session_id,
                type(error).__name__,
                error,
                delay,
            )
            return False
        self._failures.pop(conversation_id, None)
        if not await self.store.remove(conversation_id, entry_id, token):
            logger.warning(
                "Outbox lease of conversation %s lapsed during a delivery; another "
                "drainer may send %s again.",
                conversation_id,
                entry.item.describe(),
            )
            return False
        logger.info(
            "Delivered %s to conversation %s (chat %s).",
            entry.item.describe(),
            conversation_id,
            entry.chat_session_id,
        )
        return True

    def _back_off(self, conversation_id: str) -> float:
        failures = self._failures.get(conversation_id, 0) + 1
        self._failures[conversation_id] = failures
        delay: float = min(self.backoff_max, self.backoff_base * (2 ** (failures - 1)))
        self._not_before[conversation_id] = time.monotonic() + delay
        return delay

    # -- the poll: retries, other instances' leftovers, expiry -------------------------

    def start(self, presence: Optional[Presence] = None) -> None:
        """Poll for waiting messages, and hear other instances' puts for sockets held here."""
        self._presence = presence
        self._polling = asyncio.ensure_future(self._poll())
        self._listening = asyncio.ensure_future(self.store.listen(self._on_nudge))

    def _on_nudge(self, conversation_id: str) -> None:
        presence = self._presence
        if presence is not None and presence.here(conversation_id):
            self.kick(conversation_id)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                waiting = await self.store.waiting()
            except SwitchboardError as error:
                if not self._poll_failing:
                    logger.error("Outbox poll failed (logged once until it works again): %s", error)
                self._poll_failing = True
                continue
            if self._poll_failing:
                logger.info("Outbox poll works again.")
                self._poll_failing = False
            now = time.monotonic()
            for conversation_id in waiting:
                if self._not_before.get(conversation_id, 0.0) > now:
                    continue
                self._start_drainer(conversation_id)

    async def flush(self, conversation_id: str, timeout: float = SHUTDOWN_GRACE) -> None:
        """Send what waits for the conversation now, and wait (bounded) until it is sent.

        The chat's end comes after the agent's last messages: this waits for the
        drainer here and, when the customer's socket is on another instance, for
        that instance to empty the outbox. It returns early when what is left
        cannot be sent now (the customer is away, the backend refuses).
        """
        self.kick(conversation_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self._drainers.get(conversation_id)
            if task is not None and not task.done():
                await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
                continue
            presence = self._presence
            if presence is None or presence.here(conversation_id):
                return
            try:
                if not await self.store.head(conversation_id, 1):
                    return
                if not await presence.present(conversation_id):
                    return
            except SwitchboardError:
                return
            await asyncio.sleep(0.05)

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until the drainers under way are done (tests and shutdown use it)."""
        deadline = time.monotonic() + timeout
        while self._drainers and time.monotonic() < deadline:
            await asyncio.wait(
                set(self._drainers.values()), timeout=max(0.0, deadline - time.monotonic())
            )

    async def close(self) -> None:
        """Stop polling; let drainers under way finish (bounded), then cancel the rest."""
        for task in (self._polling, self._listening):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._polling = self._listening = None
        if self._drainers:
            _, pending = await asyncio.wait(set(self._drainers.values()), timeout=SHUTDOWN_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)


class OutboxLine:
    """A ``CustomerLine`` that puts into the outbox: the relay's notices go in order too."""

    def __init__(self, outbox: Outbox, channel: str) -> None:
        self._outbox = outbox
        self._channel = channel

    async def _put(self, recipient_id: str, item: ToCustomer) -> None:
        chat = await self._outbox.chat_of(recipient_id)
        try:
            await self._outbox.put(recipient_id, self._channel, chat, item)
        except SwitchboardError as error:
            # Redis is down, and a notice is mostly about that ("we have trouble
            # reaching..."): it goes straight to the customer's channel rather
            # than not at all. Only agent events must wait in the outbox.
            line = self._outbox.lines.get(self._channel)
            if line is None:
                raise
            logger.warning(
                "Outbox unreachable (%s): a notice to conversation %s goes to its channel directly.",
                error,
                recipient_id,
            )
            await send_to(line, recipient_id, item)

    async def send_text(
        self, recipient_id: str, text: str, agent: Optional[AgentIdentity] = None
    ) -> None:
        await self._put(recipient_id, ToCustomer("text", text=text, agent=agent))

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None:
        await self._put(recipient_id, ToCustomer("file", file=file, agent=agent))

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        await self._put(recipient_id, ToCustomer("typing", typing=typing))
        return True

    async def reachable(self, recipient_id: str) -> bool:
        return True
