"""The tracker record of relayed turns: buffered per conversation, written paced.

Relayed customer turns and agent messages are written into the conversation's
tracker as ``UserUttered`` and ``BotUttered`` events, but never on the hot
path: a tracker write reads and rewrites the whole tracker (InMemoryTrackerStore
does so on the event loop: 300 ms at 5,000 events, docs/benchmarks.md). So the
turns wait here and are written when the oldest has waited ``interval`` (by
the sweeper) or when the chat ends (always before the end-of-chat intent).
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from connectors.omnidesk.channel.sides import BotSide, RecordEntry

logger = logging.getLogger(__name__)


@dataclass
class _Buffer:
    entries: List[RecordEntry] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)  # when its oldest entry came


class TurnRecord:
    """Relayed turns waiting to be written to their conversation's tracker."""

    def __init__(self, bot: BotSide, interval: float) -> None:
        self._bot = bot
        self.interval = interval
        self._buffers: Dict[str, _Buffer] = {}

    def add(self, conversation_id: str, entry: RecordEntry) -> None:
        buffer = self._buffers.get(conversation_id)
        if buffer is None:
            buffer = self._buffers[conversation_id] = _Buffer()
        buffer.entries.append(entry)

    def waiting(self, conversation_id: str) -> List[RecordEntry]:
        """The turns of ``conversation_id`` not yet written, oldest first."""
        buffer = self._buffers.get(conversation_id)
        return list(buffer.entries) if buffer is not None else []

    async def flush(self, conversation_id: str) -> None:
        """Write what waits for ``conversation_id``; on failure keep it, in order, and raise."""
        buffer = self._buffers.pop(conversation_id, None)
        if buffer is None or not buffer.entries:
            return
        try:
            await self._bot.record(conversation_id, buffer.entries)
        except Exception as error:
            kept = self._buffers.setdefault(conversation_id, _Buffer(since=buffer.since))
            kept.entries[:0] = buffer.entries
            kept.since = min(kept.since, buffer.since)
            logger.error(
                "Could not write %d relayed turns to the tracker of conversation %s: %s: %s",
                len(buffer.entries),
                conversation_id,
                type(error).__name__,
                error,
            )
            raise

    async def flush_due(self) -> None:
        """Write the buffers whose oldest turn has waited ``interval``."""
        await self.flush_all(older_than=self.interval)

    async def flush_all(self, older_than: Optional[float] = None) -> None:
        """Write buffered turns; with ``older_than``, only buffers that waited that long.

        One conversation at a time, with the loop let go in between, so customer
        turns are served among the writes rather than after all of them. One
        conversation's failure (logged in ``flush``) does not stop the others.
        """
        cutoff = None if older_than is None else time.monotonic() - older_than
        for conversation_id in list(self._buffers):
            buffer = self._buffers.get(conversation_id)
            if buffer is None or (cutoff is not None and buffer.since > cutoff):
                continue
            try:
                await self.flush(conversation_id)
            except Exception:  # noqa: S112 - logged in flush; the others still get written
                continue
            await asyncio.sleep(0)
