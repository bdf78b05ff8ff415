"""The connector's HTTP routes under /webhooks/omnidesk, and the customer's socket.io event.

- ``POST /hook/<token>/<hookpoint>``: Omnidesk's four hookpoints; the token is
  the chat's own (``settings.hookpoint_token``), checked against the sessionID.
- ``POST /upload``, ``POST /event`` and the socket.io ``customer_event``: the
  customer's file and typing/widget events while with an agent. Each names its
  conversation (``sender``) and carries that handoff's customer token (the
  X-Omnidesk-Customer-Token header or a ``token`` field; on socket.io the
  socket's own session is the proof). The token is checked first; only an
  authenticated conversation is rate-limited, and a typing state the agent
  already sees is not sent again.
- ``GET /messages`` (a long poll), ``POST /stream`` (a stream's ticket) and
  ``GET /stream`` (Server-Sent Events): a rest customer fetches what waits in
  its outbox, after the cursor its client sends, which acknowledges what came
  before it. The customer token (a header) opens the poll and the ticket; the
  ticket, short-lived and signed, goes in the stream's URL (an EventSource
  cannot set headers). Then the rate limit, then the number of polls and
  streams held, per conversation and in the process (429 with Retry-After).
- ``GET /files/<token>/<name>``: the agent's files, as linked to the customer.
- ``GET /``: ``{"status": "ok"}`` whenever the process serves (as before the probes).
- ``GET /health/live`` and ``GET /health/ready``: the liveness and readiness
  probes, answered by ``Health`` (health.py).
- ``GET /metrics``: the Prometheus metrics, when ``metrics_enabled`` (docs/metrics.md).
- ``POST /twilio/status``: Twilio's status callback of an agent's message sent
  on a wrapped twilio channel; Twilio's signature is checked with that
  channel's auth token, and an undelivered or failed message is told to the agent.

Each route is one closure. It reads its body under its own cap, hands typed
values to the relay and answers ``ok``; whatever went wrong is raised and
answered by the blueprint's one exception handler from one table
(``answer_for``): what went wrong decides the status. docs/channel.md and
docs/security.md describe the routes.
"""

import asyncio
import contextlib
import hmac
import json
import logging
import mimetypes
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple
from urllib.parse import parse_qsl

from sanic import Blueprint, response
from sanic.exceptions import PayloadTooLarge, SanicException
from sanic.request import Request
from sanic.response import HTTPResponse

from connectors.omnidesk import metrics, rules
from connectors.omnidesk.channel import rasa_compat
from connectors.omnidesk.channel.files import FileTooLarge
from connectors.omnidesk.channel.health import Health
from connectors.omnidesk.channel.hookpoints import (
    HookpointFields,
    HookpointInputError,
    UploadedFile,
    fields_from,
    parse_end,
    parse_message,
    parse_typing,
    parse_upload,
    read_session_id,
)
from connectors.omnidesk.channel.lines import StatusCallbacks
from connectors.omnidesk.channel.lines.rest import ENDED_KEY, is_end, is_typing, rest_message
from connectors.omnidesk.channel.outbox import Pulled, later_id
from connectors.omnidesk.channel.outbox_store import is_entry_id
from connectors.omnidesk.channel.relay import NotPulled, Reader, Relay
from connectors.omnidesk.channel.switchboard import Handoff, NotInRelay, SwitchboardError
from connectors.omnidesk.client import OmnideskError
from connectors.omnidesk.settings import HOOKPOINT_TOKEN_LENGTH, OmnideskSettings

logger = logging.getLogger(__name__)

# -- limits ---------------------------------------------------------------------------

SMALL_BODY_BYTES = 64 * 1024
MESSAGE_BODY_BYTES = 1024 * 1024
MULTIPART_OVERHEAD_BYTES = 64 * 1024

# A customer may make this many calls at once, then one per REFILL_SECONDS.
CUSTOMER_BURST = 20
CUSTOMER_REFILL_SECONDS = 1.0
# The same typing event again within this many seconds is answered ok, not relayed.
TYPING_DEBOUNCE_SECONDS = 2.0
TYPING_EVENTS = frozenset({"startedtyping", "stoppedtyping"})
# Conversations whose limits are kept; beyond it the least recently seen is forgotten.
MAX_TRACKED = 10_000

# A customer who pulls (rest): a long poll is held this long at most (and by
# default), a stream says it is alive this often and ends after a while (its
# EventSource comes back with Last-Event-ID, which acknowledges what it had),
# and one conversation may hold this many polls and streams at once per process.
POLL_WAIT_SECONDS = 25.0
STREAM_HEARTBEAT_SECONDS = 15.0
STREAM_MAX_SECONDS = 300.0
STREAM_RETRY_MILLISECONDS = 2000
HELD_PER_CONVERSATION = 4
HELD_RETRY_AFTER_SECONDS = 5.0
# A write the client does not take within this long ends the stream.
STREAM_WRITE_TIMEOUT = 10.0

CUSTOMER_EVENT = "customer_event"
CUSTOMER_TOKEN_HEADER = "X-Omnidesk-Customer-Token"  # noqa: S105 -- a header name

_TOKEN_SHAPE = re.compile(f"[0-9a-f]{{{HOOKPOINT_TOKEN_LENGTH}}}")
# Images shown in the customer's page; any other type (SVG among them) is a download.
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
# A probe's answer is about this moment: no proxy keeps it.
_NOT_CACHED = {"Cache-Control": "no-store"}

Clock = Callable[[], float]


class ChannelStarting(RuntimeError):
    """A route was called before the channel's listeners built the relay."""


class RateLimited(Exception):
    """An authenticated conversation called the customer routes too often."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many calls from this conversation; try again shortly")
        self.retry_after = retry_after


class RateLimit:
    """A token bucket per conversation, least recently used forgotten first: O(1) per call."""

    def __init__(
        self,
        burst: int = CUSTOMER_BURST,
        refill_seconds: float = CUSTOMER_REFILL_SECONDS,
        clock: Clock = time.monotonic,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self._burst = float(burst)
        self._refill = refill_seconds
        self._clock = clock
        self._max = max_tracked
        self._buckets: OrderedDict[str, Tuple[float, float]] = OrderedDict()

    def allow(self, conversation_id: str) -> bool:
        """Take one call from the conversation's bucket; False when it is empty."""
        now = self._clock()
        tokens, last = self._buckets.pop(conversation_id, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) / self._refill)
        allowed = tokens >= 1.0
        self._buckets[conversation_id] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, conversation_id: str) -> float:
        tokens, _ = self._buckets.get(conversation_id, (self._burst, 0.0))
        return max(0.0, (1.0 - tokens) * self._refill)

    def take(self, conversation_id: str) -> None:
        """``allow``, raising RateLimited (429 with Retry-After) when the bucket is empty."""
        if not self.allow(conversation_id):
            raise RateLimited(self.retry_after(conversation_id))

    def __len__(self) -> int:
        return len(self._buckets)


class TooManyHeld(RateLimited):
    """A conversation, or the process, holds as many polls and streams as it may."""

    def __init__(self, whose: str) -> None:
        super().__init__(HELD_RETRY_AFTER_SECONDS)
        self.args = (f"too many polls and streams held {whose}; try again shortly",)


class HeldPulls:
    """How many long polls and streams this process holds: per conversation, and in all."""

    def __init__(self, per_conversation: int, in_all: int) -> None:
        self._per_conversation = per_conversation
        self._in_all = in_all
        self._held: Dict[str, int] = {}
        self._total = 0

    @contextlib.contextmanager
    def holding(self, conversation_id: str) -> Iterator[None]:
        """Count one held for ``conversation_id`` while inside; TooManyHeld (429) above a bound."""
        if self._total >= self._in_all:
            raise TooManyHeld("by this Rasa instance")
        if self._held.get(conversation_id, 0) >= self._per_conversation:
            raise TooManyHeld("for this conversation")
        self._held[conversation_id] = self._held.get(conversation_id, 0) + 1
        self._total += 1
        try:
            yield
        finally:
            self._total -= 1
            left = self._held[conversation_id] - 1
            if left:
                self._held[conversation_id] = left
            else:
                del self._held[conversation_id]

    def __len__(self) -> int:
        return self._total


class TypingDebounce:
    """Relay a typing event only when it says something new, or after a while."""

    def __init__(
        self,
        seconds: float = TYPING_DEBOUNCE_SECONDS,
        clock: Clock = time.monotonic,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self._seconds = seconds
        self._clock = clock
        self._max = max_tracked
        self._last: OrderedDict[str, Tuple[str, float]] = OrderedDict()

    def should_relay(self, conversation_id: str, event: str) -> bool:
        if event not in TYPING_EVENTS:
            return True
        now = self._clock()
        previous = self._last.get(conversation_id)
        if previous is not None and previous[0] == event and now - previous[1] < self._seconds:
            return False
        self._last.pop(conversation_id, None)
        self._last[conversation_id] = (event, now)
        if len(self._last) > self._max:
            self._last.popitem(last=False)
        return True

    def forget(self, conversation_id: str) -> None:
        """A relay that failed must not suppress the next try."""
        self._last.pop(conversation_id, None)


# -- what went wrong, and the status it answers ------------------------------------------


@dataclass(frozen=True)
class Answers:
    """What one route says when the conversation is not with an agent, or Omnidesk failed."""

    not_in_relay: str
    omnidesk_failed: str = "Omnidesk did not accept it"


HOOKPOINT_ANSWERS = Answers(not_in_relay="sessionID: no open chat with this session id")
UPLOAD_ANSWERS = Answers(
    not_in_relay="sender: this conversation is not with an agent",
    omnidesk_failed="file: Omnidesk did not accept the file; the customer was told",
)
EVENT_ANSWERS = Answers(
    not_in_relay="sender: this conversation is not with an agent",
    omnidesk_failed="event: Omnidesk did not accept the event",
)
PULL_ANSWERS = Answers(
    not_in_relay="sender: this conversation has no chat with an agent whose token or ticket this is"
)
_ANSWERS_BY_ROUTE: Mapping[str, Answers] = {
    "omnidesk_hook": HOOKPOINT_ANSWERS,
    "omnidesk_upload": UPLOAD_ANSWERS,
    "omnidesk_event": EVENT_ANSWERS,
    "omnidesk_messages": PULL_ANSWERS,
    "omnidesk_stream": PULL_ANSWERS,
    "omnidesk_stream_ticket": PULL_ANSWERS,
}


def answer_for(error: BaseException, answers: Answers) -> Tuple[int, str]:
    """The one table from what went wrong to the status and the message."""
    if isinstance(error, HookpointInputError):
        return error.status, str(error)
    if isinstance(error, FileTooLarge):
        return 413, str(error)
    if isinstance(error, NotPulled):
        return 409, (
            "sender: this conversation's channel delivers the agent's messages itself; "
            "only a rest conversation is polled or streamed"
        )
    if isinstance(error, NotInRelay):
        return 404, answers.not_in_relay
    if isinstance(error, RateLimited):
        return 429, str(error)
    if isinstance(error, OmnideskError):
        return 502, answers.omnidesk_failed
    if isinstance(error, SwitchboardError):
        logger.error("The switchboard failed: %s", error)
        return 503, "the switchboard is unavailable; try again"
    if isinstance(error, ChannelStarting):
        return 503, "the Omnidesk channel is starting; try again"
    if isinstance(error, SanicException):
        return int(getattr(error, "status_code", 500) or 500), str(error)
    logger.error(
        "Unexpected error in an Omnidesk route: %s: %s",
        type(error).__name__,
        error,
        exc_info=(type(error), error, error.__traceback__),
    )
    return 500, "internal error"


def error_body(message: str) -> Dict[str, str]:
    return {"status": "error", "message": message}


def error_response(status: int, message: str) -> HTTPResponse:
    return response.json(error_body(message), status=status)


# -- reading a request ------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 from Content-Length or as it grows past ``limit``."""
    length = request.headers.get("content-length")
    if length is not None and not (length.isascii() and length.strip().isdigit()):
        raise HookpointInputError("Content-Length", "must be a whole number of bytes")
    if length is not None and int(length) > limit:
        raise HookpointInputError("body", f"larger than {limit} bytes", status=413)
    stream: Any = request.stream
    if stream is not None:
        stream.request_max_size = limit
    receive: Any = request.receive_body
    try:
        await receive()
    except PayloadTooLarge as error:
        raise HookpointInputError("body", f"larger than {limit} bytes", status=413) from error
    return bytes(request.body or b"")


async def read_fields(request: Request, limit: int) -> HookpointFields:
    body = await read_body(request, limit)
    kind = (request.content_type or "").split(";", 1)[0].strip().lower()
    form: Optional[Mapping[str, Any]] = None
    files: Optional[Mapping[str, Any]] = None
    if kind in {"multipart/form-data", "application/x-www-form-urlencoded"}:
        form = request.form
        files = request.files
    return fields_from(
        content_type=request.content_type or "",
        body=body,
        query_string=request.query_string or "",
        form=form,
        files=files,
    )


def at_the_edge(check: Callable[..., object], *args: Any) -> None:
    """Run a rule of rules.py on a request's input; its refusal becomes the route's 4xx.

    Only the rule's own error is converted: an ``OmnideskValidationError`` from a
    later client call is Omnidesk's refusal (502), not the customer's.
    """
    try:
        check(*args)
    except rules.FieldRuleError as error:
        raise HookpointInputError(error.field, error.rule, error.status) from None


def _required_sender(value: Optional[str]) -> str:
    if not value:
        raise HookpointInputError("sender", "required (the conversation id)")
    return value


def _cursor(value: Optional[str], field: str) -> Optional[str]:
    """A client's cursor (the id of the last message it has), or None for none."""
    if value is None or value.strip() in ("", "0"):
        return None
    value = value.strip()
    if not is_entry_id(value):
        raise HookpointInputError(field, "must be a message's id, such as 1733000000000-0")
    return value


def _poll_wait(value: Optional[str]) -> float:
    if value is None or value == "":
        return POLL_WAIT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= POLL_WAIT_SECONDS:
        raise HookpointInputError("wait", f"must be seconds from 0 to {POLL_WAIT_SECONDS:g}")
    return seconds


def _event(pulled: Pulled) -> bytes:
    """One Server-Sent Event: ``typing`` and ``ended`` are named, messages are not."""
    message = rest_message(pulled)
    name = "ended" if is_end(message) else "typing" if is_typing(message) else ""
    lines = [f"event: {name}"] if name else []
    lines += [f"id: {pulled.entry_id}", f"data: {json.dumps(message)}", "", ""]
    return "\n".join(lines).encode("utf-8")


def _hookpoint_body_limit(hookpoint: str, settings: OmnideskSettings) -> int:
    if hookpoint == "uploadForCustomer":
        return settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    if hookpoint == "messageForCustomer":
        return MESSAGE_BODY_BYTES
    return SMALL_BODY_BYTES


def _agent_file_type(upload: UploadedFile) -> str:
    """What an agent's file is: its type, or, labelled octet-stream, what its name says."""
    kind = upload.content_type.split(";", 1)[0].strip().lower()
    if kind in ("", "application/octet-stream"):
        kind = mimetypes.guess_type(upload.filename)[0] or kind or "application/octet-stream"
    return kind


# -- the routes ------------------------------------------------------------------------------


class Routes:
    """The connector's routes; ``relay`` answers None until the channel has started."""

    def __init__(
        self,
        settings: OmnideskSettings,
        relay: Callable[[], Optional[Relay]],
        health: Health,
    ) -> None:
        self.settings = settings
        self._relay = relay
        self._health = health
        self.rate_limit = RateLimit()
        self.typing = TypingDebounce()
        # Polls and streams have a bucket of their own: a chatty widget's typing
        # events must not starve its fetches.
        self.pull_rate = RateLimit()
        self.held = HeldPulls(HELD_PER_CONVERSATION, settings.pull_max_held)
        # Wrapped channels that report later what became of a message, by name.
        self._status_callbacks: Dict[str, StatusCallbacks] = {}

    def on_status_callbacks(self, channel_name: str, line: StatusCallbacks) -> None:
        """Serve ``POST /twilio/status`` for the wrapped channel ``channel_name``."""
        self._status_callbacks[channel_name] = line

    def _running(self) -> Relay:
        relay = self._relay()
        if relay is None:
            raise ChannelStarting()
        return relay

    def add_to(self, blueprint: Blueprint) -> None:
        """Register every route on ``blueprint``, and the one exception handler over them."""
        settings = self.settings
        bp: Any = blueprint  # Sanic's decorators are untyped

        async def health(_: Request) -> HTTPResponse:
            return response.json({"status": "ok"})

        async def live(_: Request) -> HTTPResponse:
            status, body = self._health.liveness()
            return response.json(body, status=status, headers=_NOT_CACHED)

        async def ready(_: Request) -> HTTPResponse:
            status, body = await self._health.readiness()
            return response.json(body, status=status, headers=_NOT_CACHED)

        async def hook(request: Request, token: str, hookpoint: str) -> HTTPResponse:
            if not _TOKEN_SHAPE.fullmatch(token) or hookpoint not in rules.HOOKPOINT_NAMES:
                if not _TOKEN_SHAPE.fullmatch(token):
                    logger.warning("Hookpoint call with a malformed token refused (404).")
                    request.ctx.forged = True
                return _counted(request, error_response(404, "not found"))
            relay = self._running()
            fields = await read_fields(request, _hookpoint_body_limit(hookpoint, settings))
            # The token opens one chat: the one whose id it was derived from.
            expected = settings.hookpoint_token(read_session_id(fields))
            if not hmac.compare_digest(token.encode("ascii"), expected.encode("ascii")):
                logger.warning(
                    "Hookpoint %s call with a token not of its chat refused (404).", hookpoint
                )
                request.ctx.forged = True
                return _counted(request, error_response(404, "not found"))
            # An agent event is answered ok once it is in the customer's outbox;
            # the outbox delivers it when the customer's channel can take it.
            if hookpoint == "messageForCustomer":
                await relay.agent_message(parse_message(fields))
            elif hookpoint == "uploadForCustomer":
                upload = parse_upload(fields)
                at_the_edge(
                    rules.check_upload_size, len(upload.file.content), settings.max_upload_bytes
                )
                at_the_edge(
                    rules.check_upload_type,
                    _agent_file_type(upload.file),
                    settings.allowed_upload_types,
                )
                await relay.agent_file(upload)
            elif hookpoint == "typingIndicatorForCustomer":
                await relay.agent_typing(parse_typing(fields))
            else:
                await relay.agent_end(parse_end(fields))
            return _counted(request, response.text("ok"))

        async def upload(request: Request) -> HTTPResponse:
            relay = self._running()
            # With the conversation and the token outside the body, the token is
            # checked before the body is read.
            sender = request.args.get("sender")
            token = request.headers.get(CUSTOMER_TOKEN_HEADER)
            early = sender is not None and token is not None
            if early:
                handoff = await relay.check_customer(_required_sender(sender), token)
            fields = await read_fields(
                request, settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
            )
            if not early:
                sender = _required_sender(fields.text("sender"))
                handoff = await relay.check_customer(sender, token or fields.text("token"))
            self.rate_limit.take(handoff.conversation_id)
            file: Optional[UploadedFile] = fields.files.get("file")
            if file is None or not file.content:
                raise HookpointInputError("file", "required (a multipart file field named 'file')")
            at_the_edge(
                rules.check_upload,
                len(file.content),
                file.content_type,
                settings.max_upload_bytes,
                settings.allowed_upload_types,
            )
            await relay.customer_file(handoff, file)
            return response.json({"status": "ok"})

        async def event(request: Request) -> HTTPResponse:
            relay = self._running()
            fields = await read_fields(request, SMALL_BODY_BYTES)
            sender = _required_sender(fields.text("sender"))
            token = request.headers.get(CUSTOMER_TOKEN_HEADER) or fields.text("token")
            handoff = await relay.check_customer(sender, token)
            await self._customer_event(relay, handoff, fields.text("event"))
            return response.json({"status": "ok"})

        async def messages(request: Request) -> HTTPResponse:
            relay = self._running()
            sender = _required_sender(request.args.get("sender"))
            reader = await relay.reader(sender, request.headers.get(CUSTOMER_TOKEN_HEADER))
            after = _cursor(request.args.get("after"), "after")
            wait = _poll_wait(request.args.get("wait"))
            self.pull_rate.take(sender)
            with self.held.holding(sender):
                if after is not None:
                    await relay.acknowledge(reader, after)
                # An ended chat's last messages are there or not: nothing more will come.
                found = await relay.pull(reader, after, wait if reader.open else 0.0)
            if not found and not reader.open:
                # That chat is over and the client has all of it.
                return response.empty(status=204)
            return response.json(
                [rest_message(pulled) for pulled in found], headers={"Cache-Control": "no-store"}
            )

        async def stream_ticket(request: Request) -> HTTPResponse:
            relay = self._running()
            fields = await read_fields(request, SMALL_BODY_BYTES)
            sender = _required_sender(request.args.get("sender") or fields.text("sender"))
            token = request.headers.get(CUSTOMER_TOKEN_HEADER) or fields.text("token")
            reader = await relay.reader(sender, token)
            self.pull_rate.take(sender)
            url, ttl = relay.stream_url(reader)
            return response.json(
                {"status": "ok", "url": url, "expires_in": ttl},
                headers={"Cache-Control": "no-store"},
            )

        async def stream(request: Request) -> Optional[HTTPResponse]:
            relay = self._running()
            sender = _required_sender(request.args.get("sender"))
            reader = await relay.ticket_reader(sender, request.args.get("ticket"))
            after = later_id(
                _cursor(request.headers.get("last-event-id"), "Last-Event-ID"),
                _cursor(request.args.get("after"), "after"),
            )
            self.pull_rate.take(sender)
            with self.held.holding(sender):
                if after is not None:
                    await relay.acknowledge(reader, after)
                if not reader.open and not await relay.pull(reader, after, 0.0):
                    # The chat is over and the client has all of it: 204 stops an EventSource.
                    return response.empty(status=204)
                sse = await request.respond(
                    content_type="text/event-stream; charset=utf-8",
                    # Proxies pass each event on at once (nginx reads X-Accel-Buffering).
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
                )
                await _stream(request, sse, relay, reader, after)
            return None

        async def files(_: Request, token: str, filename: str) -> HTTPResponse:
            relay = self._relay()
            stored = None if relay is None else await relay.agent_file_at(token, filename)
            if stored is None:
                return error_response(404, "not found")
            headers = {
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private, max-age=3600",
                "Content-Security-Policy": "default-src 'none'",
            }
            if stored.content_type.split(";", 1)[0].strip().lower() not in INLINE_IMAGE_TYPES:
                # SVG is an image that can carry script: it is a download, like HTML.
                headers["Content-Disposition"] = f'attachment; filename="{stored.filename}"'
            return await response.file(stored.path, mime_type=stored.content_type, headers=headers)

        async def twilio_status(request: Request) -> HTTPResponse:
            """Twilio's word on an agent's message it took: an undelivered one, the agent hears.

            The URL carries the channel's name and what the message was (the line
            put them there); Twilio signs the URL and the form with the channel's
            auth token, so neither can be forged without it.
            """
            relay = self._running()
            line = self._status_callbacks.get(request.args.get("channel") or "")
            if line is None:
                return error_response(404, "not found")
            body = await read_body(request, SMALL_BODY_BYTES)
            params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            query = request.query_string
            url = f"{settings.public_url}{request.path}" + (f"?{query}" if query else "")
            if not line.signature_ok(url, params, request.headers.get("X-Twilio-Signature", "")):
                logger.warning("Twilio status callback without Twilio's signature refused (403).")
                return error_response(403, "X-Twilio-Signature: not Twilio's signature")
            what = request.args.get("what") or ""
            reason = line.failure_in(params)
            conversation_id = params.get("To", "")
            if reason is not None and what in ("message", "file") and conversation_id:
                await relay.agent_message_failed_later(conversation_id, what, reason)
            return response.empty()

        async def metrics_page(_: Request) -> HTTPResponse:
            """The Prometheus text format; open handoffs and waiting deliveries counted now.

            404 unless ``metrics_enabled``: the route is always there, so its path is
            refused the same way whether the metrics are off or the path is wrong.
            """
            if not settings.metrics_enabled:
                return error_response(404, "not found")
            relay = self._relay()
            if relay is not None:
                await metrics.ScrapeSources(relay.open_count, relay.waiting_count).refresh()
            state = self._health.state
            metrics.set_health(state.switchboard_ok, state.omnidesk_ok)
            body, content_type = metrics.render()
            return response.raw(body, content_type=content_type)

        async def answer_error(request: Request, error: Exception) -> HTTPResponse:
            route = str(request.name or "").rsplit(".", 1)[-1]
            status, message = answer_for(error, _ANSWERS_BY_ROUTE.get(route, HOOKPOINT_ANSWERS))
            if isinstance(error, NotInRelay) and route == "omnidesk_hook":
                logger.info(
                    "Hookpoint %s for chat %s refused: not with an agent now (404).",
                    request.path.rsplit("/", 1)[-1],
                    error.args[0] if error.args else "?",
                )
            elif isinstance(error, HookpointInputError):
                logger.info("%s refused (%d): %s", request.path.rsplit("/", 1)[-1], status, message)
            headers = {}
            if isinstance(error, RateLimited):
                logger.info("Customer calls over the rate limit (429).")
                headers["Retry-After"] = str(max(1, int(error.retry_after + 0.999)))
            answer = response.json(error_body(message), status=status, headers=headers)
            return _counted(request, answer)

        # strict_slashes: a path is served as written, ".../endSession/" is a 404.
        bp.add_route(health, "/", methods=["GET"], name="omnidesk_health")
        bp.add_route(
            live, "/health/live", methods=["GET"], name="omnidesk_live", strict_slashes=True
        )
        bp.add_route(
            ready, "/health/ready", methods=["GET"], name="omnidesk_ready", strict_slashes=True
        )
        # The posts are streamed: each reads its body itself, under its own cap.
        for handler, path, name in (
            (hook, "/hook/<token:str>/<hookpoint:str>", "omnidesk_hook"),
            (upload, "/upload", "omnidesk_upload"),
            (event, "/event", "omnidesk_event"),
            (twilio_status, "/twilio/status", "omnidesk_twilio_status"),
        ):
            bp.add_route(
                handler, path, methods=["POST"], stream=True, name=name, strict_slashes=True
            )
        bp.add_route(
            messages, "/messages", methods=["GET"], name="omnidesk_messages", strict_slashes=True
        )
        bp.add_route(
            stream, "/stream", methods=["GET"], name="omnidesk_stream", strict_slashes=True
        )
        bp.add_route(
            stream_ticket,
            "/stream",
            methods=["POST"],
            stream=True,
            name="omnidesk_stream_ticket",
            strict_slashes=True,
        )
        bp.add_route(
            files,
            "/files/<token:str>/<filename:str>",
            methods=["GET"],
            name="omnidesk_files",
            strict_slashes=True,
        )
        bp.add_route(
            metrics_page, "/metrics", methods=["GET"], name="omnidesk_metrics", strict_slashes=True
        )
        bp.exception(Exception)(answer_error)

    async def _customer_event(self, relay: Relay, handoff: Handoff, event: Any) -> None:
        """An authenticated customer's typing or widget event: limited, debounced, relayed."""
        conversation_id = handoff.conversation_id
        self.rate_limit.take(conversation_id)
        at_the_edge(rules.check_event, event)
        if not self.typing.should_relay(conversation_id, str(event)):
            return  # the agent already sees this typing state
        try:
            await relay.customer_event(handoff, str(event))
        except Exception:
            self.typing.forget(conversation_id)
            raise

    # -- socket.io ---------------------------------------------------------------------

    def on_socketio(self, sio: Any, namespace: Optional[str], session_persistence: bool) -> None:
        """Serve the ``customer_event`` socket.io event on the wrapped socket.io server.

        The socket's own session (as confirmed at session_request) is the proof of
        who is calling; without session_persistence it is the socket id.
        """

        async def customer_event(sid: str, data: Any = None, *_more: Any) -> Dict[str, str]:
            # A client may emit the event with no argument, or with several:
            # either is an error answer, never a handler that raises.
            if not isinstance(data, Mapping):
                return error_body("data: must be an object with 'event'")
            if session_persistence:
                sender = await rasa_compat.socket_session(sio, sid, namespace)
                if sender is None:
                    return error_body("session_id: send session_request first")
                claimed = data.get("session_id")
                if claimed is not None and claimed != sender:
                    logger.warning(
                        "socket.io customer_event for another session refused (socket %s).", sid
                    )
                    return error_body("session_id: not this socket's session")
            else:
                sender = sid
            try:
                relay = self._running()
                handoff = await relay.with_agent(sender)
                await self._customer_event(relay, handoff, data.get("event"))
            except Exception as error:
                _status, message = answer_for(error, EVENT_ANSWERS)
                return error_body(message)
            return {"status": "ok"}

        sio.on(CUSTOMER_EVENT, namespace=namespace)(customer_event)


async def _stream(
    request: Request, sse: Any, relay: Relay, reader: Reader, after: Optional[str]
) -> None:
    """Send what arrives for ``reader`` as events until the chat ends or the stream's time is up.

    Nothing is acknowledged here: the client's next cursor does that (its
    EventSource's Last-Event-ID). A quiet stream gets a comment every
    heartbeat, which keeps proxies from closing it. A chat that ended without
    its end in the outbox (the store was down at that moment) is ended on the
    stream once it has been gone for two heartbeats.
    """
    conversation_id = reader.conversation_id
    transport = getattr(request, "transport", None)

    async def send(data: bytes) -> None:
        try:
            await asyncio.wait_for(sse.send(data), STREAM_WRITE_TIMEOUT)
        except asyncio.TimeoutError:
            # A hung client costs a task and a socket, and only until here.
            if transport is not None:
                transport.abort()
            raise _ClientGone() from None

    cursor = after
    gone = 0
    ends_at = time.monotonic() + STREAM_MAX_SECONDS
    try:
        await send(f"retry: {STREAM_RETRY_MILLISECONDS}\n\n".encode("ascii"))
        while time.monotonic() < ends_at:
            wait = min(STREAM_HEARTBEAT_SECONDS, max(0.0, ends_at - time.monotonic()))
            found = await relay.pull(reader, cursor, wait)
            for pulled in found:
                await send(_event(pulled))
                cursor = pulled.entry_id
                if pulled.entry.item.kind == "ended":
                    return
            if found:
                continue
            await send(b": still here\n\n")
            if await relay.still_open(conversation_id, reader.chat_session_id):
                gone = 0
                continue
            gone += 1
            if gone >= 2:
                ended = {"recipient_id": conversation_id, "custom": {ENDED_KEY: {"outcome": ""}}}
                await send(f"event: ended\ndata: {json.dumps(ended)}\n\n".encode())
                return
    except _ClientGone:
        logger.info(
            "Stream of conversation %s closed: its client took nothing for %.0f s.",
            conversation_id,
            STREAM_WRITE_TIMEOUT,
        )
    except SwitchboardError as error:
        # The client comes back with its Last-Event-ID; nothing was acknowledged.
        logger.warning("Stream of conversation %s ended early: %s", conversation_id, error)


class _ClientGone(Exception):
    """A stream's client took nothing within STREAM_WRITE_TIMEOUT."""


def _counted(request: Request, answer: HTTPResponse) -> HTTPResponse:
    """Every hookpoint answer is counted (forged tokens apart); other routes pass through."""
    if str(request.name or "").endswith("omnidesk_hook"):
        hookpoint = request.path.rsplit("/", 1)[-1]
        forged = bool(getattr(request.ctx, "forged", False))
        metrics.hookpoint_answer(hookpoint, answer.status, forged=forged)
    return answer
