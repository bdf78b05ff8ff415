"""The customer's routes while with an agent: a file, typing and widget events.

- ``POST /upload``: a file for the agent (multipart ``sender``, ``file``).
- ``POST /event`` and the socket.io ``customer_event``: typing or a widget event.

Each call names its conversation (``sender``) and carries that handoff's
customer token (``token`` field or the X-Omnidesk-Customer-Token header; on
socket.io the socket's own session is the proof), is rate-limited per
conversation, and a typing state the agent already sees is not sent again.
A wrong token answers as a conversation not with an agent (404). docs/channel.md
and docs/security.md describe them.
"""

import hmac
import logging
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from sanic import response
from sanic.request import Request
from sanic.response import HTTPResponse

from connectors.omnidesk import rules
from connectors.omnidesk.channel import rasa_compat
from connectors.omnidesk.channel.edge import (
    MULTIPART_OVERHEAD_BYTES,
    SMALL_BODY_BYTES,
    Answers,
    answer_for,
    at_the_edge,
    error_body,
    error_response,
    read_fields,
)
from connectors.omnidesk.channel.hookpoints import (
    HookpointFields,
    HookpointInputError,
    UploadedFile,
)
from connectors.omnidesk.channel.limits import RateLimit, TypingDebounce
from connectors.omnidesk.channel.relay import Relay
from connectors.omnidesk.channel.switchboard import NotInRelay
from connectors.omnidesk.settings import OmnideskSettings

logger = logging.getLogger(__name__)

CUSTOMER_EVENT = "customer_event"

UPLOAD_ANSWERS = Answers(
    not_in_relay="sender: this conversation is not with an agent",
    omnidesk_failed="file: Omnidesk did not accept the file; the customer was told",
)
EVENT_ANSWERS = Answers(
    not_in_relay="sender: this conversation is not with an agent",
    omnidesk_failed="event: Omnidesk did not accept the event",
)


class CustomerRoutes:
    """The customer's routes; ``relay`` raises ChannelStarting until the channel has started."""

    def __init__(self, settings: OmnideskSettings, relay: Callable[[], Relay]) -> None:
        self.settings = settings
        self.relay = relay
        self.rate_limit = RateLimit()
        self.typing = TypingDebounce()

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
            fields = await read_fields(
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
            at_the_edge(
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
            fields = await read_fields(request, SMALL_BODY_BYTES)
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
