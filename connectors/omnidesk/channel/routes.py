"""The connector's HTTP routes under /webhooks/omnidesk, and the socket.io customer event.

- ``POST /hook/<token>/<hookpoint>``: Omnidesk's four hookpoints; the token is
  the chat's own (``settings.hookpoint_token``), checked against the sessionID.
- ``POST /upload``, ``POST /event`` and the socket.io ``customer_event``: the
  customer's file and typing/widget events while with an agent.
- ``GET /files/<token>/<name>``: the agent's files, as linked to the customer.
- ``GET /``: health.

Each route reads its body under its own cap, hands typed values to the relay
and answers from one table (``answer_for``): what went wrong decides the status,
never a 500. docs/channel.md and docs/security.md describe them.
"""

import hmac
import logging
import mimetypes
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from sanic import Blueprint, response
from sanic.exceptions import PayloadTooLarge
from sanic.request import Request
from sanic.response import HTTPResponse

from connectors.omnidesk import rules
from connectors.omnidesk.channel import rasa_compat
from connectors.omnidesk.channel.files import FileTooLarge
from connectors.omnidesk.channel.hookpoints import (
    HookpointFields,
    HookpointInputError,
    UploadedFile,
    fields_from,
    parse_end,
    parse_message,
    parse_typing,
    parse_upload,
    session_id_of,
)
from connectors.omnidesk.channel.limits import RateLimit, TypingDebounce
from connectors.omnidesk.channel.relay import Relay
from connectors.omnidesk.channel.switchboard import NotInRelay, SwitchboardError
from connectors.omnidesk.client import OmnideskError
from connectors.omnidesk.settings import HOOKPOINT_TOKEN_LENGTH, OmnideskSettings

logger = logging.getLogger(__name__)

CUSTOMER_EVENT = "customer_event"
SMALL_BODY_BYTES = 64 * 1024
MESSAGE_BODY_BYTES = 1024 * 1024
MULTIPART_OVERHEAD_BYTES = 64 * 1024
_TOKEN_SHAPE = re.compile(f"[0-9a-f]{{{HOOKPOINT_TOKEN_LENGTH}}}")
# Images shown in the customer's page; any other type (SVG among them) is a download.
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
HOOKPOINT_NAMES = (
    "messageForCustomer",
    "uploadForCustomer",
    "typingIndicatorForCustomer",
    "endSession",
)


class ChannelStarting(RuntimeError):
    """A route was called before the channel's listeners built the relay."""


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


def answer_for(error: Exception, answers: Answers) -> Optional[Tuple[int, str]]:
    """The one table from what went wrong to the status and message; None: not ours to map."""
    if isinstance(error, HookpointInputError):
        return error.status, str(error)
    if isinstance(error, FileTooLarge):
        return 413, str(error)
    if isinstance(error, NotInRelay):
        return 404, answers.not_in_relay
    if isinstance(error, OmnideskError):
        return 502, answers.omnidesk_failed
    if isinstance(error, SwitchboardError):
        logger.error("The switchboard failed: %s", error)
        return 503, "the switchboard is unavailable; try again"
    if isinstance(error, ChannelStarting):
        return 503, "the Omnidesk channel is starting; try again"
    return None


def error_body(message: str) -> Dict[str, str]:
    return {"status": "error", "message": message}


def error_response(status: int, message: str) -> HTTPResponse:
    return response.json(error_body(message), status=status)


class Routes:
    """The connector's routes; ``relay`` answers None until the channel has started."""

    def __init__(self, settings: OmnideskSettings, relay: Callable[[], Optional[Relay]]) -> None:
        self.settings = settings
        self._relay = relay
        self.rate_limit = RateLimit()
        self.typing = TypingDebounce()

    def relay(self) -> Relay:
        relay = self._relay()
        if relay is None:
            raise ChannelStarting()
        return relay

    def add_to(self, blueprint: Blueprint) -> None:
        # Sanic marks its handlers with attributes, which bound methods cannot take,
        # so each route is a plain function; its decorators are untyped, hence Any.
        routes: Any = blueprint

        async def health(request: Request) -> HTTPResponse:
            return await self.health(request)

        async def hook(request: Request, token: str, hookpoint: str) -> HTTPResponse:
            return await self.hookpoint(request, token, hookpoint)

        async def upload(request: Request) -> HTTPResponse:
            return await self.customer_upload(request)

        async def event(request: Request) -> HTTPResponse:
            return await self.customer_event(request)

        async def files(request: Request, token: str, filename: str) -> HTTPResponse:
            return await self.serve_file(request, token, filename)

        # strict_slashes: a path is served as written, ".../endSession/" is a 404.
        routes.add_route(health, "/", methods=["GET"], name="omnidesk_health")
        routes.add_route(
            hook,
            "/hook/<token:str>/<hookpoint:str>",
            methods=["POST"],
            stream=True,
            name="omnidesk_hook",
            strict_slashes=True,
        )
        routes.add_route(
            upload,
            "/upload",
            methods=["POST"],
            stream=True,
            name="omnidesk_upload",
            strict_slashes=True,
        )
        routes.add_route(
            event,
            "/event",
            methods=["POST"],
            stream=True,
            name="omnidesk_event",
            strict_slashes=True,
        )
        routes.add_route(
            files,
            "/files/<token:str>/<filename:str>",
            methods=["GET"],
            name="omnidesk_files",
            strict_slashes=True,
        )

    # -- reading a body ----------------------------------------------------------------

    @staticmethod
    async def _read_body(request: Request, limit: int) -> bytes:
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

    async def _fields(self, request: Request, limit: int) -> HookpointFields:
        body = await self._read_body(request, limit)
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

    def _check_agent_file_type(self, upload: UploadedFile) -> None:
        """An agent's file goes to the customer only if its type is allowed, as a customer's is.

        Omnidesk may label a file application/octet-stream; its name then says
        what it is.
        """
        kind = upload.content_type.split(";", 1)[0].strip().lower()
        if kind in ("", "application/octet-stream"):
            kind = mimetypes.guess_type(upload.filename)[0] or kind or "application/octet-stream"
        _at_the_edge(rules.check_upload_type, kind, self.settings.allowed_upload_types)

    # -- the routes --------------------------------------------------------------------

    async def health(self, _: Request) -> HTTPResponse:
        return response.json({"status": "ok"})

    async def hookpoint(self, request: Request, token: str, hookpoint: str) -> HTTPResponse:
        if not _TOKEN_SHAPE.fullmatch(token):
            logger.warning("Hookpoint call with a malformed token refused (404).")
            return error_response(404, "not found")
        if hookpoint not in HOOKPOINT_NAMES:
            return error_response(404, "not found")
        try:
            relay = self.relay()
            if hookpoint == "uploadForCustomer":
                limit = self.settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
            elif hookpoint == "messageForCustomer":
                limit = MESSAGE_BODY_BYTES
            else:
                limit = SMALL_BODY_BYTES
            fields = await self._fields(request, limit)
            # The token opens one chat: the one whose id it was derived from.
            expected = self.settings.hookpoint_token(session_id_of(fields))
            if not hmac.compare_digest(token.encode("ascii"), expected.encode("ascii")):
                logger.warning(
                    "Hookpoint %s call with a token not of its chat refused (404).", hookpoint
                )
                return error_response(404, "not found")
            # An agent event is answered ok once it is in the customer's outbox;
            # the outbox delivers it when the customer's channel can take it.
            if hookpoint == "messageForCustomer":
                await relay.delivery.message(parse_message(fields))
            elif hookpoint == "uploadForCustomer":
                upload = parse_upload(fields)
                _at_the_edge(
                    rules.check_upload_size,
                    len(upload.file.content),
                    self.settings.max_upload_bytes,
                )
                self._check_agent_file_type(upload.file)
                await relay.delivery.upload(upload)
            elif hookpoint == "typingIndicatorForCustomer":
                await relay.delivery.typing(parse_typing(fields))
            else:
                await relay.agent_end(parse_end(fields))
        except Exception as error:
            answer = answer_for(error, HOOKPOINT_ANSWERS)
            if answer is None:
                raise
            status, message = answer
            if isinstance(error, NotInRelay):
                logger.info(
                    "Hookpoint %s for chat %s refused: not with an agent now (404).",
                    hookpoint,
                    error.args[0] if error.args else "?",
                )
            elif isinstance(error, HookpointInputError):
                logger.info("Hookpoint %s refused (%d): %s", hookpoint, status, message)
            return error_response(status, message)
        return response.text("ok")

    async def _check_customer(self, relay: Relay, sender: str, token: Optional[str]) -> None:
        """The caller holds this handoff's customer token; NotInRelay (404) otherwise.

        A wrong token answers exactly as a conversation not with an agent, so the
        routes tell a guesser nothing about who is chatting.
        """
        handoff = await relay.switchboard.get(sender)
        if handoff is None:
            raise NotInRelay(sender)
        expected = self.settings.customer_token(handoff.chat_session_id)
        if not token or not hmac.compare_digest(
            token.encode("utf-8", "replace"), expected.encode("ascii")
        ):
            logger.warning(
                "Customer route call for conversation %s without its customer token refused (404).",
                sender,
            )
            raise NotInRelay(sender)

    def _rate_limited(self, sender: str) -> Optional[HTTPResponse]:
        if self.rate_limit.allow(sender):
            return None
        wait = max(1, int(self.rate_limit.retry_after(sender) + 0.999))
        logger.info("Customer calls of conversation %s over the rate limit (429).", sender)
        return response.json(
            error_body("too many calls from this conversation; try again shortly"),
            status=429,
            headers={"Retry-After": str(wait)},
        )

    async def customer_upload(self, request: Request) -> HTTPResponse:
        try:
            relay = self.relay()
            fields = await self._fields(
                request, self.settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
            )
            sender = fields.text("sender")
            if not sender:
                raise HookpointInputError("sender", "required (the conversation id)")
            limited = self._rate_limited(sender)
            if limited is not None:
                return limited
            await self._check_customer(relay, sender, _customer_token(request, fields))
            upload: Optional[UploadedFile] = fields.files.get("file")
            if upload is None or not upload.content:
                raise HookpointInputError("file", "required (a multipart file field named 'file')")
            _at_the_edge(
                rules.check_upload,
                len(upload.content),
                upload.content_type,
                self.settings.max_upload_bytes,
                self.settings.allowed_upload_types,
            )
            await relay.customer_upload(sender, upload)
        except Exception as error:
            answer = answer_for(error, UPLOAD_ANSWERS)
            if answer is None:
                raise
            return error_response(*answer)
        return response.json({"status": "ok"})

    async def customer_event(self, request: Request) -> HTTPResponse:
        try:
            fields = await self._fields(request, SMALL_BODY_BYTES)
        except HookpointInputError as error:
            return error_response(error.status, str(error))
        sender = fields.text("sender")
        if not sender:
            return error_response(400, "sender: required (the conversation id)")
        limited = self._rate_limited(sender)
        if limited is not None:
            return limited
        try:
            await self._check_customer(self.relay(), sender, _customer_token(request, fields))
        except Exception as error:
            answer = answer_for(error, EVENT_ANSWERS)
            if answer is None:
                raise
            return error_response(*answer)
        status, body = await self.relay_customer_event(sender, fields.text("event"))
        return response.json(body, status=status)

    async def relay_customer_event(self, sender: str, event: Any) -> Tuple[int, Dict[str, str]]:
        """Relay a customer's typing or widget event; the status and body to answer with."""
        try:
            rules.check_event(event)
        except rules.FieldRuleError as error:
            return 400, error_body(f"event: {error.rule}")
        if not self.typing.should_relay(sender, str(event)):
            return 200, {"status": "ok"}  # the agent already sees this typing state
        try:
            await self.relay().customer_event(sender, str(event))
        except Exception as error:
            self.typing.forget(sender)
            answer = answer_for(error, EVENT_ANSWERS)
            if answer is None:
                raise
            status, message = answer
            return status, error_body(message)
        return 200, {"status": "ok"}

    async def serve_file(self, _: Request, token: str, filename: str) -> HTTPResponse:
        relay = self._relay()
        if relay is None:
            return error_response(404, "not found")
        stored = await relay.delivery.files.lookup(token, filename)
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

    # -- socket.io ---------------------------------------------------------------------

    def on_socketio(self, sio: Any, namespace: Optional[str], session_persistence: bool) -> None:
        """Serve the ``customer_event`` socket.io event on the wrapped socket.io server."""

        async def customer_event(sid: str, data: Any = None, *_more: Any) -> Dict[str, str]:
            # A client may emit the event with no argument, or with several:
            # either is an error answer, never a handler that raises.
            if not isinstance(data, Mapping):
                return error_body("data: must be an object with 'event'")
            if session_persistence:
                # The socket's own session, as confirmed at session_request; a
                # session_id in the payload must be that one, never another's.
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
            if not self.rate_limit.allow(sender):
                return error_body("too many calls from this conversation; try again shortly")
            _status, body = await self.relay_customer_event(sender, data.get("event"))
            return body

        sio.on(CUSTOMER_EVENT, namespace=namespace)(customer_event)


CUSTOMER_TOKEN_HEADER = "X-Omnidesk-Customer-Token"  # noqa: S105 -- a header name


def _customer_token(request: Request, fields: HookpointFields) -> Optional[str]:
    """The customer token, from the ``token`` field or the X-Omnidesk-Customer-Token header."""
    return fields.text("token") or request.headers.get(CUSTOMER_TOKEN_HEADER)


def _at_the_edge(check: Callable[..., object], *args: Any) -> None:
    """Run a rule of rules.py on a request's input; its refusal becomes the route's 4xx.

    Only the rule's own error is converted: an ``OmnideskValidationError`` from a
    later client call is Omnidesk's refusal (502), not the customer's.
    """
    try:
        check(*args)
    except rules.FieldRuleError as error:
        raise HookpointInputError(error.field, error.rule, error.status) from None
