"""socket.io presence: which sessions have a socket connected, on any instance.

The outbox (outbox.py) sends a socket.io customer's entries from the instance
holding their socket; ``Presence`` tells it which one that is, through the
outbox store (outbox_store.py). Nothing here imports rasa or sanic.
"""

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable, Dict, Optional, Set

from connectors.omnidesk.channel.outbox_store import OutboxStore
from connectors.omnidesk.channel.switchboard import SwitchboardError

logger = logging.getLogger(__name__)

PRESENCE_TTL = 6.0  # seconds a socket counts as connected without a refresh
PRESENCE_REFRESH = 2.0  # seconds between refreshes by the instance holding the socket


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
