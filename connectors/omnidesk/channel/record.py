"""The tracker record of relayed turns: buffered per conversation, written paced.

Relayed customer turns and agent messages are written into the conversation's
tracker as ``UserUttered`` and ``BotUttered`` events, but never on the hot
path: a tracker write reads and rewrites the whole tracker (InMemoryTrackerStore
does so on the event loop: 300 ms at 5,000 events, docs/benchmarks.md). So the
turns wait here and are written when the oldest has waited ``interval`` (by
the sweeper) or when the chat ends (always before the end-of-chat intent).

Where they wait follows the switchboard: in this process with ``memory://``;
in Redis with a Redis switchboard (a list per conversation), so any instance
can write them and a crash loses none. A write of one conversation runs under
a flush lease, one instance at a time; each entry carries an id that goes into
the event's metadata, so a write retried after a crash skips what is already
in the tracker: each turn reaches it exactly once, in order.
"""

import abc
import asyncio
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from connectors.omnidesk.channel.redis_switchboard import RedisSwitchboard
from connectors.omnidesk.channel.sides import BotSide, RecordEntry
from connectors.omnidesk.channel.switchboard import Switchboard, SwitchboardError

logger = logging.getLogger(__name__)

FLUSH_LEASE = 60.0  # seconds one instance may spend writing one conversation's turns
FLUSH_POLL = 0.05  # seconds between looks while another instance writes a conversation


class RecordBuffer(abc.ABC):
    """Where relayed turns wait for the tracker, oldest first per conversation."""

    @abc.abstractmethod
    async def add(self, conversation_id: str, entry: RecordEntry) -> None: ...

    @abc.abstractmethod
    async def peek(self, conversation_id: str) -> List[RecordEntry]:
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
class _Buffer:
    entries: List[RecordEntry] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)  # when its oldest entry came


class MemoryRecordBuffer(RecordBuffer):
    """Entries of this process, for the in-memory switchboard."""

    def __init__(self) -> None:
        self._buffers: Dict[str, _Buffer] = {}
        self._locks: Dict[str, str] = {}

    async def add(self, conversation_id: str, entry: RecordEntry) -> None:
        buffer = self._buffers.get(conversation_id)
        if buffer is None:
            buffer = self._buffers[conversation_id] = _Buffer()
        buffer.entries.append(entry)

    async def peek(self, conversation_id: str) -> List[RecordEntry]:
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


# Push an entry and note when the conversation's oldest entry came (NX keeps
# the first). KEYS: the list, the due set; ARGV: the entry, now, conversation.
_ADD_SCRIPT = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[3])
return 1
"""

# Drop the written entries; the conversation is due again from now if any wait.
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


class RedisRecordBuffer(RecordBuffer):
    """Entries in Redis beside the switchboard's handoffs, shared by every instance."""

    def __init__(self, switchboard: RedisSwitchboard) -> None:
        self._board = switchboard
        self._redis: Any = switchboard.redis
        self._prefix = f"{switchboard.prefix}record:"
        self._add = self._redis.register_script(_ADD_SCRIPT)
        self._drop = self._redis.register_script(_DROP_SCRIPT)
        self._unlock = self._redis.register_script(_UNLOCK_SCRIPT)

    def _keys(self, conversation_id: str) -> Tuple[str, str]:
        return f"{self._prefix}{conversation_id}", f"{self._prefix}due"

    async def add(self, conversation_id: str, entry: RecordEntry) -> None:
        await self._board.call(
            "record",
            self._add(
                keys=list(self._keys(conversation_id)),
                args=[json.dumps(asdict(entry)), time.time(), conversation_id],
            ),
        )

    async def peek(self, conversation_id: str) -> List[RecordEntry]:
        raws = await self._board.call(
            "record read", self._redis.lrange(self._keys(conversation_id)[0], 0, -1)
        )
        entries: List[RecordEntry] = []
        for raw in raws:
            try:
                entries.append(RecordEntry(**json.loads(raw)))
            except (TypeError, ValueError) as error:
                raise SwitchboardError(
                    f"a waiting tracker entry of conversation {conversation_id} could not be "
                    f"read ({error})"
                ) from error
        return entries

    async def drop(self, conversation_id: str, count: int) -> None:
        await self._board.call(
            "record drop",
            self._drop(
                keys=list(self._keys(conversation_id)),
                args=[count, time.time(), conversation_id],
            ),
        )

    async def due(self, older_than: Optional[float]) -> List[str]:
        top = "+inf" if older_than is None else time.time() - older_than
        members = await self._board.call(
            "record due", self._redis.zrangebyscore(self._keys("")[1], "-inf", top)
        )
        return [str(member) for member in members]

    async def lock(self, conversation_id: str) -> Optional[str]:
        token = uuid.uuid4().hex
        taken = await self._board.call(
            "record lock",
            self._redis.set(
                f"{self._prefix}lock:{conversation_id}", token, nx=True, px=int(FLUSH_LEASE * 1000)
            ),
        )
        return token if taken else None

    async def unlock(self, conversation_id: str, token: str) -> None:
        await self._board.call(
            "record unlock",
            self._unlock(keys=[f"{self._prefix}lock:{conversation_id}"], args=[token]),
        )


def buffer_for(switchboard: Switchboard) -> RecordBuffer:
    """Turns wait where the handoffs live."""
    if isinstance(switchboard, RedisSwitchboard):
        return RedisRecordBuffer(switchboard)
    return MemoryRecordBuffer()


class TurnRecord:
    """Relayed turns waiting to be written to their conversation's tracker."""

    def __init__(
        self, bot: BotSide, interval: float, buffer: Optional[RecordBuffer] = None
    ) -> None:
        self._bot = bot
        self.interval = interval
        self.buffer = buffer or MemoryRecordBuffer()

    async def add(self, conversation_id: str, entry: RecordEntry) -> None:
        """Keep ``entry`` for the tracker; a store failure is logged, the turn goes on."""
        try:
            await self.buffer.add(conversation_id, entry)
        except SwitchboardError as error:
            logger.error(
                "Could not keep a relayed turn of conversation %s for its tracker: %s",
                conversation_id,
                error,
            )

    async def waiting(self, conversation_id: str) -> List[RecordEntry]:
        """The turns of ``conversation_id`` not yet written, oldest first."""
        return await self.buffer.peek(conversation_id)

    async def flush(self, conversation_id: str, wait: bool = True) -> None:
        """Write what waits for ``conversation_id``; on failure keep it, in order, and raise.

        Under the conversation's flush lease. When another writer holds it, wait
        for it (``wait``, as the end of a chat does) and write what is left, or
        leave it to that writer.
        """
        deadline = time.monotonic() + FLUSH_LEASE
        while True:
            token = await self.buffer.lock(conversation_id)
            if token is not None:
                break
            if not wait or time.monotonic() > deadline:
                return
            await asyncio.sleep(FLUSH_POLL)
        try:
            entries = await self.buffer.peek(conversation_id)
            if not entries:
                return
            try:
                await self._bot.record(conversation_id, entries)
            except Exception as error:
                logger.error(
                    "Could not write %d relayed turns to the tracker of conversation %s: %s: %s",
                    len(entries),
                    conversation_id,
                    type(error).__name__,
                    error,
                )
                raise
            await self.buffer.drop(conversation_id, len(entries))
        finally:
            await self.buffer.unlock(conversation_id, token)

    async def flush_due(self) -> None:
        """Write the buffers whose oldest turn has waited ``interval``."""
        await self.flush_all(older_than=self.interval)

    async def flush_all(self, older_than: Optional[float] = None) -> None:
        """Write buffered turns; with ``older_than``, only buffers that waited that long.

        One conversation at a time, with the loop let go in between, so customer
        turns are served among the writes rather than after all of them. One
        conversation's failure (logged in ``flush``) does not stop the others.
        """
        try:
            conversations = await self.buffer.due(older_than)
        except SwitchboardError as error:
            logger.error("Could not list the relayed turns waiting for trackers: %s", error)
            return
        for conversation_id in conversations:
            try:
                await self.flush(conversation_id, wait=False)
            except Exception:  # noqa: S112 - logged in flush; the others still get written
                continue
            await asyncio.sleep(0)
