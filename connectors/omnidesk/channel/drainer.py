"""Draining a conversation's outbox: one drainer at a time, oldest entry first.

A drainer holds the conversation's lease in the outbox store
(outbox_store.py) and takes its entries off one at a time: it drops what this
version cannot read, what waited longer than ``outbox_retention``, stale
typing and entries for a channel no longer wrapped; it leaves the rest waiting
while the customer is away (``AWAY_RECHECK``) and backs off when the channel
refuses; it removes an entry only once the channel took it, while it still
holds the lease. The outbox (outbox.py) starts drainers on a put, a nudge or
its poll. Nothing here imports rasa or sanic.
"""

import asyncio
import logging
import time
import uuid
from typing import Dict, Mapping, Optional, Set

from connectors.omnidesk import handoff_events, metrics
from connectors.omnidesk.channel.outbox_store import OutboxStore
from connectors.omnidesk.channel.presence import Presence
from connectors.omnidesk.channel.sides import CustomerLine
from connectors.omnidesk.channel.switchboard import SwitchboardError
from connectors.omnidesk.channel.to_customer import DELIVERY_TIMEOUT, OutboxEntry, send_to

logger = logging.getLogger(__name__)

LEASE_TTL = 15.0  # seconds a drainer holds a conversation; more than DELIVERY_TIMEOUT
AWAY_RECHECK = 30.0  # seconds before an absent customer's outbox is looked at again unasked
HEAD_BATCH = 20  # entries read per round trip
SHUTDOWN_GRACE = 5.0  # seconds drainers under way may finish at shutdown
TYPING_STALE = 10.0  # seconds after which a waiting typing indicator means nothing


class Drainer:
    """Drains outboxes, one drainer per conversation at a time; one per Outbox."""

    def __init__(
        self,
        store: OutboxStore,
        lines: Mapping[str, CustomerLine],
        retention: float,
        backoff_base: float,
        backoff_max: float,
    ) -> None:
        self.store = store
        self.lines = lines
        self.retention = retention
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.presence: Optional[Presence] = None
        self._drainers: Dict[str, asyncio.Task[None]] = {}
        self._again: Set[str] = set()
        self._failures: Dict[str, int] = {}
        self._not_before: Dict[str, float] = {}  # monotonic: retry after backoff, or away

    def kick(self, conversation_id: str) -> None:
        """Drain the conversation's outbox now (a drainer under way goes round once more)."""
        self._not_before.pop(conversation_id, None)
        self._failures.pop(conversation_id, None)
        self.start(conversation_id)

    def due(self, conversation_id: str, now: float) -> bool:
        """Whether the conversation is neither backing off nor waiting for an absent customer."""
        return self._not_before.get(conversation_id, 0.0) <= now

    def running(self, conversation_id: str) -> "Optional[asyncio.Task[None]]":
        """The conversation's drainer under way here, if any."""
        return self._drainers.get(conversation_id)

    def start(self, conversation_id: str) -> None:
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
            _given_up(entry, "expired")
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
            _given_up(entry, "channel_not_wrapped")
            return await self.store.remove(conversation_id, entry_id, token)
        if not await line.reachable(conversation_id):
            presence = self.presence
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
        metrics.agent_delivery(entry.item.metric_kind, delivered=True)
        return True

    def _back_off(self, conversation_id: str) -> float:
        failures = self._failures.get(conversation_id, 0) + 1
        self._failures[conversation_id] = failures
        delay: float = min(self.backoff_max, self.backoff_base * (2 ** (failures - 1)))
        self._not_before[conversation_id] = time.monotonic() + delay
        return delay

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until the drainers under way are done (tests and shutdown use it)."""
        deadline = time.monotonic() + timeout
        while self._drainers and time.monotonic() < deadline:
            await asyncio.wait(
                set(self._drainers.values()), timeout=max(0.0, deadline - time.monotonic())
            )

    async def close(self) -> None:
        """Let drainers under way finish (bounded), then cancel the rest."""
        if self._drainers:
            _, pending = await asyncio.wait(set(self._drainers.values()), timeout=SHUTDOWN_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)


def _given_up(entry: OutboxEntry, reason: str) -> None:
    """An entry taken off without reaching the customer: counted and logged as a failure."""
    metrics.agent_delivery(entry.item.metric_kind, delivered=False)
    handoff_events.failure(
        "delivery",
        entry.conversation_id,
        entry.chat_session_id,
        kind=entry.item.metric_kind,
        reason=reason,
    )
