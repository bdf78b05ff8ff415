"""The edge every connector route shares: reading a body under its cap, one error table.

A route reads its body with ``read_fields`` under the cap it names (a
Content-Length over it, or a body that grows past it, is a 413 before the body
is read), runs a rule of rules.py on its input with ``at_the_edge`` (a refusal
becomes the route's 4xx), and turns what went wrong into a status with
``answer_for``: the one table, never a 500. routes.py (Omnidesk's hookpoints,
agent files, health) and customer_routes.py (the customer's file and events)
use it.
"""

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from sanic import response
from sanic.exceptions import PayloadTooLarge
from sanic.request import Request
from sanic.response import HTTPResponse

from connectors.omnidesk import rules
from connectors.omnidesk.channel.files import FileTooLarge
from connectors.omnidesk.channel.hookpoints import (
    HookpointFields,
    HookpointInputError,
    fields_from,
)
from connectors.omnidesk.channel.switchboard import NotInRelay, SwitchboardError
from connectors.omnidesk.client import OmnideskError

logger = logging.getLogger(__name__)

SMALL_BODY_BYTES = 64 * 1024
MESSAGE_BODY_BYTES = 1024 * 1024
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class ChannelStarting(RuntimeError):
    """A route was called before the channel's listeners built the relay."""


@dataclass(frozen=True)
class Answers:
    """What one route says when the conversation is not with an agent, or Omnidesk failed."""

    not_in_relay: str
    omnidesk_failed: str = "Omnidesk did not accept it"


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


async def read_body(request: Request, limit: int) -> bytes:
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
