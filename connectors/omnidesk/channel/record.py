"""The tracker record of relayed turns: kept per conversation, written paced.

Relayed customer turns and agent messages are written into the conversation's
tracker as ``UserUttered`` and ``BotUttered`` events, but never on the hot
path: a tracker write reads and rewrites the whole tracker (InMemoryTrackerStore
does so on the event loop: 300 ms at 5,000 events, docs/benchmarks.md). So the
turns wait and are written when the oldest has waited ``interval`` (by the
sweeper) or when the chat ends (always before the end-of-chat intent).

Where they wait follows the switchboard (its ``records``): in this process with
``memory://``; in Redis with a Redis switchboard (a list per conversation), so
any instance can write them and a crash loses none. A customer turn is kept in
the same step that gives its place in the line up. A write of one
conversation runs under a flush lease, one instance at a time; each entry
carries an id that goes into the event's metadata, so a write retried after a
crash skips what is already in the tracker: each turn reaches it exactly once,
in order.
"""

import asyncio
import json
import logging
import time
from typing import List, Optional

from connectors.omnidesk.channel.sides import BotSide, RecordEntry
from connectors.omnidesk.channel.switchboard import Place, RecordBuffer, SwitchboardError

logger = logging.getLogger(__name__)

FLUSH_LEASE = 60.0  # seconds one instance may spend writing one conversation's turns
FLUSH_POLL = 0.05  # seconds between looks while another instance writes a conversation


def to_json(entry: RecordEntry) -> str:
    # vars(), not dataclasses.asdict: the fields are plain values, and asdict's deep
    # copy was a tenth of the connector's CPU on a relayed turn.
    return json.dumps(vars(entry), sort_keys=True)


def from_json(conversation_id: str, raw: str) -> RecordEntry:
    try:
        return RecordEntry(**json.loads(raw))
    except (TypeError, ValueError) as error:
        raise SwitchboardError(
            f"a waiting tracker entry of conversation {conversation_id} could not be read ({error})"
        ) from error


class TurnRecord:
    """Relayed turns waiting to be written to their conversation's tracker."""

    def __init__(self, bot: BotSide, interval: float, buffer: RecordBuffer) -> None:
        self._bot = bot
        self.interval = interval
        self.buffer = buffer

    def keep(self, place: Place, entry: RecordEntry) -> None:
        """Keep a customer turn for the tracker when its place in the line is given up."""
        place.kept.append(to_json(entry))

    async def add(self, conversation_id: str, entry: RecordEntry) -> None:
        """Keep ``entry`` for the tracker; a store failure is logged, the turn goes on."""
        try:
            await self.buffer.add(conversation_id, to_json(entry))
        except SwitchboardError as error:
            logger.error(
                "Could not keep a relayed turn of conversation %s for its tracker: %s",
                conversation_id,
                error,
            )

    async def waiting(self, conversation_id: str) -> List[RecordEntry]:
        """The turns of ``conversation_id`` not yet written, oldest first."""
        return [from_json(conversation_id, raw) for raw in await self.buffer.peek(conversation_id)]

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
            entries = await self.waiting(conversation_id)
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
