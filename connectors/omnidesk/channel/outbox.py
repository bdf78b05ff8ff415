"""The outbox: everything the connector sends a customer in a handoff, in order, kept until taken.

Agent text, agent files, the agent's typing, the connector's notices and the
handoff's details are put in one outbox per conversation before a hookpoint
answers ``ok``. A drainer takes them off one at a time, oldest first, and
removes an entry only once the customer's channel took it. A socket.io
customer's entries are sent by the instance a socket of that session is
connected to (``Presence``; a put nudges every instance through Redis); for the
callback channel and any other, the send must succeed. A customer who pulls
(rest: ``sides.is_pulled``) is sent nothing: their client reads what waits
after its cursor and acknowledges it (``read``, ``wait``, ``acknowledge``), or
the answer to their next turn carries it (``take_for_answer``). What the channel
refused stays and is tried again with backoff (``outbox_backoff_base`` doubling
up to ``outbox_backoff_max``); what waits longer than ``outbox_retention`` is
dropped and logged with its chat id.

One drainer per conversation at a time, across instances: a short lease per
conversation, and an entry is removed only while its drainer still holds the
lease (a fencing check in the same Redis script). Where entries, leases and
presence live is the seam below this module, outbox_store.py: in this process
with ``memory://``, in the switchboard's Redis otherwise. docs/architecture.md
("The outbox") says why a Stream.

Here, top to bottom: what an entry is (``ToCustomer``, ``OutboxEntry``), its
timings (``OutboxTimings``), which instance holds a socket (``Presence``), and
the ``Outbox`` itself (put, drain, the customer's pulls, poll, lifecycle).
"""

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Set, Tuple

from connectors.omnidesk import handoff_events, metrics, tasks
from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.outbox_store import OutboxStore, Row, entry_order
from connectors.omnidesk.channel.sides import (
    CustomerLine,
    FileLink,
    RoutedLine,
    Undeliverable,
    is_pulled,
)
from connectors.omnidesk.channel.switchboard import SwitchboardError
from connectors.omnidesk.settings import OmnideskSettings

logger = logging.getLogger(__name__)

# -- what an entry is ----------------------------------------------------------------


@dataclass(frozen=True)
class ToCustomer:
    """One thing for the customer: text (agent's or a notice), an agent file, typing,
    the handoff's details (the customer token and the routes it opens), a bot
    message as Rasa uttered it (``response``: the bot's words when it takes back
    a conversation), or, for a customer who pulls, the end of the chat
    (``ended``, after the bot's words: a stream closes on it)."""

    kind: str  # "text" | "file" | "typing" | "details" | "response" | "ended"
    text: str = ""
    file: Optional[FileLink] = None
    typing: bool = False
    agent: Optional[AgentIdentity] = None
    details: Optional[Mapping[str, str]] = None
    response: Optional[Mapping[str, Any]] = None
    # A connector notice's text: "notice", or "end" for the end-of-chat message.
    notice: str = ""
    # How the chat ended (a HandoffOutcome's value), on an "ended" entry.
    outcome: str = ""

    @property
    def metric_kind(self) -> str:
        """What omnidesk_agent_deliveries_total calls it: message, file, typing, notice, end."""
        if self.notice:
            return self.notice
        # The handoff's details, the bot's words and the end are the connector's own.
        kinds = {
            "text": "message",
            "file": "file",
            "details": "notice",
            "response": "notice",
            "ended": "notice",
        }
        return kinds.get(self.kind, "typing")

    def describe(self) -> str:
        if self.notice:
            return "end-of-chat notice" if self.notice == "end" else "notice"
        names = {
            "text": "message",
            "file": "agent file",
            "details": "handoff details",
            "response": "bot message",
            "ended": "end of the chat",
        }
        return names.get(self.kind, "agent typing")

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
        if self.details is not None:
            data["details"] = dict(self.details)
        if self.response is not None:
            data["response"] = dict(self.response)
        if self.notice:
            data["notice"] = self.notice
        if self.outcome:
            data["outcome"] = self.outcome
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> "ToCustomer":
        return cls.from_dict(json.loads(raw))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ToCustomer":
        file = data.get("file")
        agent = data.get("agent")
        details = data.get("details")
        response = data.get("response")
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
            details=(
                {str(key): str(value) for key, value in details.items()}
                if isinstance(details, Mapping)
                else None
            ),
            response=dict(response) if isinstance(response, Mapping) else None,
            notice=str(data.get("notice", "")),
            outcome=str(data.get("outcome", "")),
        )


async def send_to(
    line: CustomerLine,
    conversation_id: str,
    item: ToCustomer,
    route: Optional[Mapping[str, str]] = None,
) -> None:
    """Send ``item`` on ``line``; raises whatever the customer's channel raised.

    ``route`` is where the conversation's replies go on a channel that needs
    more than its id (``Handoff.route``); a line that takes routes is given it.
    """
    if isinstance(line, RoutedLine):
        line = line.along(route)
    if item.kind == "text":
        await line.send_text(conversation_id, item.text, item.agent)
    elif item.kind == "file" and item.file is not None:
        await line.send_file(conversation_id, item.file, item.agent)
    elif item.kind == "response" and item.response is not None:
        await line.send_response(conversation_id, dict(item.response))
    elif item.kind == "details" and item.details is not None:
        if not await line.send_details(conversation_id, item.details):
            logger.debug(
                "The channel of conversation %s has no use for handoff details.", conversation_id
            )
    elif item.kind == "ended":
        # Only a customer who pulls is told; a pushing channel had the bot's words.
        return
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
    # The handoff's route (Slack's channel and thread, Teams' conversation
    # reference), so the entry reaches the right place after the handoff is gone.
    route: Optional[Mapping[str, str]] = None

    def to_fields(self) -> Dict[str, str]:
        """The entry as the store keeps it: ``e`` the item's JSON, the envelope beside it.

        A script can write the envelope itself (the switchboard's ``accept``
        fills the channel and the route from the handoff it read).
        """
        return {
            "e": self.item.to_json(),
            "c": self.conversation_id,
            "ch": self.channel,
            "chat": self.chat_session_id,
            "at": repr(self.stored_at),
            "r": json.dumps(dict(self.route), sort_keys=True) if self.route else "",
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> "OutboxEntry":
        route = json.loads(fields["r"]) if fields.get("r") else None
        return cls(
            conversation_id=str(fields["c"]),
            channel=str(fields["ch"]),
            chat_session_id=str(fields["chat"]),
            stored_at=float(fields["at"]),
            item=ToCustomer.from_json(fields["e"]),
            route=(
                {str(key): str(value) for key, value in route.items()}
                if isinstance(route, Mapping)
                else None
            ),
        )


@dataclass(frozen=True)
class Pulled:
    """An entry as a customer who pulls reads it: its id is their cursor."""

    entry_id: str
    entry: OutboxEntry


# -- timings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxTimings:
    """Every timing of the outbox, in seconds, in one place.

    ``retention`` and the backoff come from the settings (``outbox_retention``,
    ``outbox_backoff_base``, ``outbox_backoff_max``); the rest are fixed here.
    """

    retention: float = 86400.0
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    # How often the conversations with waiting entries are looked over (retries
    # after backoff, entries another instance left when it died, expiry).
    poll_interval: float = 0.5
    # How long a drainer holds a conversation; more than delivery_timeout, so a
    # lapse needs a send that hung past its own timeout.
    lease_ttl: float = 15.0
    delivery_timeout: float = 10.0
    # An absent customer's outbox is looked at again unasked this often (their
    # return starts a drainer at once).
    away_recheck: float = 30.0
    shutdown_grace: float = 5.0  # drainers under way may finish at shutdown
    typing_stale: float = 10.0  # a waiting typing indicator older than this means nothing
    # A socket counts as connected this long without a refresh by its instance,
    # which refreshes it every presence_refresh.
    presence_ttl: float = 6.0
    presence_refresh: float = 2.0
    pull_batch: int = 50  # entries one poll answer or stream read carries at most

    @classmethod
    def from_settings(cls, settings: OmnideskSettings) -> "OutboxTimings":
        return cls(
            retention=settings.outbox_retention,
            backoff_base=settings.outbox_backoff_base,
            backoff_max=settings.outbox_backoff_max,
        )


# -- socket.io presence ----------------------------------------------------------------


class Presence:
    """Which socket.io sessions have a socket connected, here and on any instance.

    The instance holding a socket marks it present in the store with an expiry
    and renews it every ``presence_refresh``; a crashed instance stops renewing,
    so its sockets stop counting within ``presence_ttl``. ``here`` (this
    process's own sockets) decides whether this instance sends; the store only
    tells whether the customer is connected somewhere else.
    """

    def __init__(self, store: OutboxStore, timings: OutboxTimings) -> None:
        self._store = store
        self._timings = timings
        self._sockets: Dict[str, Set[str]] = {}  # socket id -> recipients it stands for
        self._recipients: Dict[str, Set[str]] = {}  # recipient -> its socket ids here

    def here(self, recipient_id: str) -> bool:
        """Whether a socket of ``recipient_id`` is connected to this process."""
        return bool(self._recipients.get(recipient_id))

    async def present(self, recipient_id: str) -> bool:
        """Whether a socket of ``recipient_id`` is connected to some instance."""
        return await self._store.present(recipient_id)

    async def joined(self, recipient_id: str, socket_id: str) -> None:
        self._sockets.setdefault(socket_id, set()).add(recipient_id)
        self._recipients.setdefault(recipient_id, set()).add(socket_id)
        await _logged(
            self._store.mark_present(recipient_id, socket_id, self._timings.presence_ttl),
            recipient_id,
        )

    async def left(self, socket_id: str) -> List[str]:
        """Forget a socket; the recipients it stood for."""
        recipients = self._sockets.pop(socket_id, set())
        for recipient in recipients:
            sockets = self._recipients.get(recipient, set())
            sockets.discard(socket_id)
            if not sockets:
                self._recipients.pop(recipient, None)
        for recipient in recipients:
            await _logged(self._store.mark_gone(recipient, socket_id), recipient)
        return sorted(recipients)

    async def refresh(self) -> None:
        held = [(r, sid) for sid, rs in list(self._sockets.items()) for r in rs]
        if not held:
            return
        try:
            await self._store.mark_present_many(held, self._timings.presence_ttl)
        except SwitchboardError as error:
            logger.error(
                "Could not renew the presence of %d socket.io sessions: %s", len(held), error
            )

    async def forget_all(self) -> None:
        for socket_id in list(self._sockets):
            await self.left(socket_id)


async def _logged(step: Any, conversation_id: str) -> None:
    try:
        await step
    except SwitchboardError as error:
        logger.error("Could not update the presence of conversation %s: %s", conversation_id, error)


# -- the outbox ----------------------------------------------------------------------------

# Hears an entry the customer's channel refused for good, with the channel's reason.
OnUndeliverable = Callable[[OutboxEntry, str], Awaitable[None]]


class Outbox:
    """Puts what the customer is sent in order, and drains it when their channel takes it."""

    def __init__(
        self,
        store: OutboxStore,
        lines: Mapping[str, CustomerLine],
        timings: Optional[OutboxTimings] = None,
        on_undeliverable: Optional[OnUndeliverable] = None,
    ) -> None:
        self.timings = timings or OutboxTimings()
        self._store = store
        self._lines = dict(lines)
        self.on_undeliverable = on_undeliverable
        # The channels any instance can send on (a socket.io customer is sent to
        # from the instance holding their socket).
        self.sent_from_anywhere = tuple(
            name
            for name, line in self._lines.items()
            if not line.held_by_socket and not is_pulled(line)
        )
        self.presence = Presence(store, self.timings)
        self._drainers: Dict[str, asyncio.Task[None]] = {}
        self._again: Set[str] = set()
        # An entry and the lease a store step took for a drainer already under way.
        self._handed: Dict[str, Tuple[Row, str]] = {}
        self._failures: Dict[str, int] = {}
        self._not_before: Dict[str, float] = {}  # monotonic: retry after backoff, or away
        self._background: List[asyncio.Task[None]] = []
        self._poll_failing = False
        # Polls and streams waiting for a conversation's next entry, woken by any put.
        self._pullers: Dict[str, Set[asyncio.Event]] = {}

    # -- putting -----------------------------------------------------------------

    async def put(
        self,
        conversation_id: str,
        channel: str,
        chat_session_id: str,
        item: ToCustomer,
        route: Optional[Mapping[str, str]] = None,
    ) -> None:
        """Store ``item`` for the customer, then start draining; SwitchboardError if not stored.

        ``route``: the handoff's route, for a channel that needs one (``Handoff.route``).
        """
        entry = OutboxEntry(conversation_id, channel, chat_session_id, time.time(), item, route)
        await self._store.put(conversation_id, entry.to_fields())
        logger.debug(
            "Outbox of conversation %s (chat %s): %s stored.",
            conversation_id,
            chat_session_id,
            item.describe(),
        )
        self.kick(conversation_id, channel)

    async def send_now(
        self,
        conversation_id: str,
        channel: str,
        item: ToCustomer,
        route: Optional[Mapping[str, str]] = None,
    ) -> None:
        """Send ``item`` on the customer's channel directly, bypassing the store.

        For a notice when the store is down: it is mostly about that ("we have
        trouble reaching..."), and it reaches the customer rather than not at all.
        Raises what the channel raised; LookupError for a channel not wrapped.
        """
        line = self._lines.get(channel)
        if line is None:
            raise LookupError(f"no wrapped channel named {channel}")
        await asyncio.wait_for(
            send_to(line, conversation_id, item, route), timeout=self.timings.delivery_timeout
        )

    # -- socket.io presence ---------------------------------------------------------

    async def socket_joined(self, recipient_id: str, socket_id: str) -> None:
        """A socket of ``recipient_id`` can be reached here: what waits for it is sent."""
        await self.presence.joined(recipient_id, socket_id)
        self.kick(recipient_id)

    async def socket_left(self, socket_id: str) -> None:
        await self.presence.left(socket_id)

    # -- draining ----------------------------------------------------------------

    def kick(self, conversation_id: str, channel: Optional[str] = None) -> None:
        """Drain the conversation's outbox now (a drainer under way goes round once more).

        Its polls and streams are woken; a customer who pulls (``channel``) needs
        no drainer.
        """
        self._wake(conversation_id)
        if channel is not None and self.pulls(channel):
            return
        self._not_before.pop(conversation_id, None)
        self._failures.pop(conversation_id, None)
        self._start_drainer(conversation_id)

    def taken(self, conversation_id: str, row: Row, token: str) -> None:
        """Deliver an entry a store step just put and leased for this instance (no read back).

        The switchboard's ``accept`` stores an agent's message and, when no one
        drains the conversation, takes its drainer lease in the same round trip;
        the entry is then sent from here and removed in one more.
        """
        self._wake(conversation_id)
        self._start_drainer(conversation_id, (row, token))

    def _start_drainer(self, conversation_id: str, first: Optional[Tuple[Row, str]] = None) -> None:
        running = self._drainers.get(conversation_id)
        if running is not None and not running.done():
            self._again.add(conversation_id)
            if first is not None:
                # The drainer under way goes round once more, with the lease taken for it.
                self._handed[conversation_id] = first
            return
        task = asyncio.ensure_future(self._drain_loop(conversation_id, first))
        self._drainers[conversation_id] = task

        def done(finished: "asyncio.Task[None]") -> None:
            if self._drainers.get(conversation_id) is finished:
                del self._drainers[conversation_id]

        task.add_done_callback(done)

    async def _drain_loop(
        self, conversation_id: str, first: Optional[Tuple[Row, str]] = None
    ) -> None:
        while True:
            self._again.discard(conversation_id)
            first = first or self._handed.pop(conversation_id, None)
            try:
                await self._drain(conversation_id, first)
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
            first = None
            if conversation_id not in self._again:
                return

    async def _drain(self, conversation_id: str, first: Optional[Tuple[Row, str]]) -> None:
        """Send the conversation's entries oldest first, one round trip per entry.

        The lease comes with the head entry (``take``), and each removal renews
        it with the next one (``remove``), or releases it when none is left.
        """
        ttl = self.timings.lease_ttl
        if first is not None:
            row, token = first
            rows: Optional[List[Row]] = [row]
        else:
            token = uuid.uuid4().hex
            rows = await self._store.take(conversation_id, token, ttl)
            if rows is None:
                # Another drainer has it; it goes on until the outbox is empty, and the
                # poll looks again in case it had just finished.
                return
        stopped = False
        try:
            while rows:
                entry_id, fields = rows[0]
                rows = await self._handle(conversation_id, entry_id, fields, token)
                if rows is None:
                    stopped = True
                    return
            # Drained (the store released the lease): nothing of it is kept here.
            self._failures.pop(conversation_id, None)
            self._not_before.pop(conversation_id, None)
        except BaseException:
            stopped = True
            raise
        finally:
            if stopped:
                try:
                    await self._store.release(conversation_id, token)
                except SwitchboardError as error:
                    logger.warning(
                        "Outbox lease of conversation %s not released (it expires on its own): %s",
                        conversation_id,
                        error,
                    )

    async def _remove(self, conversation_id: str, entry_id: str, token: str) -> Optional[List[Row]]:
        return await self._store.remove(conversation_id, entry_id, token, self.timings.lease_ttl)

    async def _handle(
        self, conversation_id: str, entry_id: str, fields: Dict[str, str], token: str
    ) -> Optional[List[Row]]:
        """Send one entry and remove it: what waits next, or None when draining stops here."""
        try:
            entry = OutboxEntry.from_fields(fields)
        except (ValueError, KeyError, TypeError) as error:
            logger.error(
                "Outbox of conversation %s holds an entry this version cannot read (%s); dropped.",
                conversation_id,
                error,
            )
            return await self._remove(conversation_id, entry_id, token)
        age = time.time() - entry.stored_at
        if age > self.timings.retention:
            logger.warning(
                "Outbox of conversation %s (chat %s): %s waited %.0f s, longer than "
                "outbox_retention (%.0f s); dropped undelivered.",
                conversation_id,
                entry.chat_session_id,
                entry.item.describe(),
                age,
                self.timings.retention,
            )
            _given_up(entry, "expired")
            return await self._remove(conversation_id, entry_id, token)
        if entry.item.kind == "typing" and age > self.timings.typing_stale:
            # The agent's typing of minutes ago, shown to a customer who came back, would lie.
            logger.debug("Outbox of conversation %s: stale agent typing dropped.", conversation_id)
            return await self._remove(conversation_id, entry_id, token)
        line = self._lines.get(entry.channel)
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
            return await self._remove(conversation_id, entry_id, token)
        if is_pulled(line):
            # The customer's client reads and acknowledges it; the drainer only keeps
            # the retention, looking again after a while.
            self._not_before[conversation_id] = time.monotonic() + self.timings.away_recheck
            return None
        if entry.item.kind == "ended":
            # Only a customer who pulls is told of the end this way.
            return await self._remove(conversation_id, entry_id, token)
        if line.held_by_socket and not self.presence.here(conversation_id):
            await self._wait_for_socket(conversation_id, entry)
            return None
        try:
            await asyncio.wait_for(
                send_to(line, conversation_id, entry.item, entry.route),
                timeout=self.timings.delivery_timeout,
            )
        except asyncio.CancelledError:
            raise
        except Undeliverable as refused:
            return await self._refused_for_good(entry, entry_id, token, str(refused))
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
            return None
        self._failures.pop(conversation_id, None)
        following = await self._remove(conversation_id, entry_id, token)
        if following is None:
            logger.warning(
                "Outbox lease of conversation %s lapsed during a delivery; another "
                "drainer may send %s again.",
                conversation_id,
                entry.item.describe(),
            )
            return None
        logger.debug(
            "Delivered %s to conversation %s (chat %s).",
            entry.item.describe(),
            conversation_id,
            entry.chat_session_id,
        )
        metrics.agent_delivery(entry.item.metric_kind, delivered=True)
        return following

    async def _refused_for_good(
        self, entry: OutboxEntry, entry_id: str, token: str, reason: str
    ) -> Optional[List[Row]]:
        """The channel refused the entry for good: taken off, counted, logged, the relay told."""
        conversation_id = entry.conversation_id
        logger.error(
            "The channel of conversation %s (chat %s) refused %s for good: %s",
            conversation_id,
            entry.chat_session_id,
            entry.item.describe(),
            reason,
        )
        self._failures.pop(conversation_id, None)
        following = await self._remove(conversation_id, entry_id, token)
        if following is None:
            return None
        _given_up(entry, "refused")
        if self.on_undeliverable is not None:
            try:
                await self.on_undeliverable(entry, reason)
            except Exception as error:
                logger.error(
                    "Could not report the undelivered %s of conversation %s: %s: %s",
                    entry.item.describe(),
                    conversation_id,
                    type(error).__name__,
                    error,
                )
        return following

    async def _wait_for_socket(self, conversation_id: str, entry: OutboxEntry) -> None:
        """No socket of the customer here: the instance holding one sends, or their return."""
        if await self.presence.present(conversation_id):
            # The instance holding the socket drains it: it heard the put's nudge.
            logger.debug(
                "Outbox of conversation %s: its socket is on another instance.", conversation_id
            )
        else:
            logger.info(
                "Outbox of conversation %s (chat %s): the customer is not connected; "
                "%s waits for them.",
                conversation_id,
                entry.chat_session_id,
                entry.item.describe(),
            )
        self._not_before[conversation_id] = time.monotonic() + self.timings.away_recheck

    def _back_off(self, conversation_id: str) -> float:
        failures = self._failures.get(conversation_id, 0) + 1
        self._failures[conversation_id] = failures
        timings = self.timings
        delay: float = min(timings.backoff_max, timings.backoff_base * (2 ** (failures - 1)))
        self._not_before[conversation_id] = time.monotonic() + delay
        return delay

    # -- the customer pulls (rest) --------------------------------------------------

    def pulls(self, channel: str) -> bool:
        """Whether the customer of ``channel`` fetches what waits (rest) rather than being sent it."""
        return is_pulled(self._lines.get(channel))

    async def mark_ended(
        self, conversation_id: str, channel: str, chat_session_id: str, outcome: str
    ) -> None:
        """For a customer who pulls: the chat is over, after the bot's words. Never raises.

        Not stored (Redis down), a stream still ends: it looks at the handoff on
        every heartbeat (routes.py).
        """
        if not self.pulls(channel):
            return
        try:
            await self.put(
                conversation_id, channel, chat_session_id, ToCustomer("ended", outcome=outcome)
            )
        except SwitchboardError as error:
            logger.warning(
                "Outbox of conversation %s (chat %s): the end of the chat not stored: %s",
                conversation_id,
                chat_session_id,
                error,
            )

    async def acknowledge(self, conversation_id: str, up_to: str) -> int:
        """The customer's client has everything up to ``up_to``: taken off, counted delivered."""
        removed = await self._store.acknowledge(conversation_id, up_to)
        for _, fields in removed:
            entry = _readable(conversation_id, fields)
            if entry is not None and self._fresh(entry):
                metrics.agent_delivery(entry.item.metric_kind, delivered=True)
        if removed:
            logger.info(
                "Delivered %d outbox entries to conversation %s: its client has them up to %s.",
                len(removed),
                conversation_id,
                up_to,
            )
        return len(removed)

    async def chats_waiting(self, conversation_id: str) -> Dict[str, bool]:
        """The chats whose entries wait in the conversation's outbox (the oldest few hundred),
        each with whether its ``ended`` entry is among them: until it is, the chat is
        still ending (the bot's words and the end are on their way)."""
        rows = await self._store.read_after(conversation_id, None, self.timings.pull_batch * 4)
        chats: Dict[str, bool] = {}
        for _, fields in rows:
            entry = _readable(conversation_id, fields)
            if entry is not None:
                ended = chats.get(entry.chat_session_id, False) or entry.item.kind == "ended"
                chats[entry.chat_session_id] = ended
        return chats

    async def read(
        self, conversation_id: str, after: Optional[str], chat_session_id: str
    ) -> List[Pulled]:
        """What waits after ``after`` for chat ``chat_session_id``, oldest first, up to a batch.

        Entries of another chat (an earlier handoff's leftovers), entries past
        the retention and agent typing gone stale are skipped: an
        acknowledgement past them takes them off.
        """
        found: List[Pulled] = []
        cursor = after
        batch = self.timings.pull_batch
        while True:
            rows = await self._store.read_after(conversation_id, cursor, batch)
            for entry_id, fields in rows:
                entry = _readable(conversation_id, fields)
                if (
                    entry is not None
                    and entry.chat_session_id == chat_session_id
                    and self._fresh(entry)
                ):
                    found.append(Pulled(entry_id, entry))
            if found or len(rows) < batch:
                return found[:batch]
            cursor = rows[-1][0]

    async def wait(
        self, conversation_id: str, after: Optional[str], chat_session_id: str, timeout: float
    ) -> List[Pulled]:
        """``read``, waiting up to ``timeout`` seconds for something to arrive.

        Woken by a put on this instance and, through the store's nudge, on any
        other; no polling. Without a nudge (pub/sub reconnecting) it still
        reads again when ``timeout`` runs out.
        """
        woken = asyncio.Event()
        waiting = self._pullers.setdefault(conversation_id, set())
        waiting.add(woken)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                woken.clear()
                found = await self.read(conversation_id, after, chat_session_id)
                remaining = deadline - loop.time()
                if found or remaining <= 0:
                    return found
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(woken.wait(), remaining)
        finally:
            waiting.discard(woken)
            if not waiting:
                self._pullers.pop(conversation_id, None)

    async def hand_out(self, conversation_id: str, pulled: List[Pulled]) -> None:
        """A poll or stream is about to give the client ``pulled``: the next answer skips them."""
        if pulled:
            await self._store.note_handed(conversation_id, pulled[-1].entry_id)

    async def take_for_answer(self, conversation_id: str) -> List[Pulled]:
        """What waits for a customer who pulls, for the answer to their turn; taken off.

        Only what no poll or stream has handed out yet, of any chat, agent
        typing left out (it would be stale by the time it is shown). The
        answer is the cursor: what it carries is acknowledged with it.
        """
        handed = await self._store.handed(conversation_id)
        rows = await self._store.read_after(conversation_id, handed, self.timings.pull_batch)
        taken = []
        for entry_id, fields in rows:
            entry = _readable(conversation_id, fields)
            if entry is not None and entry.item.kind != "typing" and self._fresh(entry):
                taken.append(Pulled(entry_id, entry))
        if rows:
            await self.acknowledge(conversation_id, rows[-1][0])
        return taken

    def _fresh(self, entry: OutboxEntry) -> bool:
        age = time.time() - entry.stored_at
        if age > self.timings.retention:
            return False
        return not (entry.item.kind == "typing" and age > self.timings.typing_stale)

    def _wake(self, conversation_id: str) -> None:
        for woken in self._pullers.get(conversation_id, ()):
            woken.set()

    def pullers_waiting(self) -> int:
        """How many polls and streams wait here now."""
        return sum(len(waiting) for waiting in self._pullers.values())

    async def count_waiting(self) -> int:
        """How many entries wait, in every conversation (the metrics)."""
        return await self._store.count_waiting()

    # -- the background: the poll, other instances' puts, presence ------------------

    def start(self) -> None:
        """Poll for waiting messages, hear other instances' puts, renew presence."""
        self._background = [
            asyncio.ensure_future(self._poll()),
            asyncio.ensure_future(self._store.listen(self._on_nudge)),
            asyncio.ensure_future(self._refresh_presence()),
        ]

    def _on_nudge(self, conversation_id: str) -> None:
        self._wake(conversation_id)
        if self.presence.here(conversation_id):
            self.kick(conversation_id)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.timings.poll_interval)
            try:
                waiting = await self._store.waiting()
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
                if self._not_before.get(conversation_id, 0.0) <= now:
                    self._start_drainer(conversation_id)

    async def _refresh_presence(self) -> None:
        while True:
            await asyncio.sleep(self.timings.presence_refresh)
            await self.presence.refresh()

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until the drainers under way are done (tests and shutdown use it)."""
        deadline = time.monotonic() + timeout
        while self._drainers and time.monotonic() < deadline:
            await asyncio.wait(
                set(self._drainers.values()), timeout=max(0.0, deadline - time.monotonic())
            )

    async def close(self) -> None:
        """Stop the background; drainers under way finish (bounded); the store is closed."""
        await tasks.stop_all(self._background)
        self._background = []
        if self._drainers:
            _, pending = await asyncio.wait(
                set(self._drainers.values()), timeout=self.timings.shutdown_grace
            )
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        await self.presence.forget_all()
        await self._store.close()

    def drainer_state_size(self) -> Tuple[int, int, int]:
        """How many conversations the drainer keeps state for (failures, waits, running)."""
        return len(self._failures), len(self._not_before), len(self._drainers)


def _readable(conversation_id: str, fields: Mapping[str, str]) -> Optional[OutboxEntry]:
    """The entry, or None (logged) when this version cannot read it."""
    try:
        return OutboxEntry.from_fields(fields)
    except (ValueError, KeyError, TypeError) as error:
        logger.error(
            "Outbox of conversation %s holds an entry this version cannot read (%s); skipped.",
            conversation_id,
            error,
        )
        return None


def later_id(first: Optional[str], second: Optional[str]) -> Optional[str]:
    """The later of two entry ids (None is before every id)."""
    if first is None:
        return second
    if second is None:
        return first
    return first if entry_order(first) >= entry_order(second) else second


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
