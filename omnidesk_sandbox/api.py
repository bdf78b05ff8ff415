"""The Omnidesk API, as the sandbox serves it: record, maybe fault, validate, apply, answer.

Paths are those of omnidesk-api.txt; the base URL plays both the account host
(/api/v2/...) and the chat-config host (/requestChatConfig).
"""

import asyncio
import contextlib
import hmac
import logging
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from aiohttp import hdrs, web

from connectors.omnidesk.rules import FieldRuleError
from omnidesk_sandbox import forms, validation
from omnidesk_sandbox.faults import FaultDecision
from omnidesk_sandbox.keys import state_of, stopping_of
from omnidesk_sandbox.state import FilePart, RecordedCall, SandboxState, UnknownChat
from omnidesk_sandbox.validation import UploadedFile

logger = logging.getLogger(__name__)

SECRET_FIELDS = frozenset({"chatAccountToken", "chatServerToken", "apiKey"})
FORM_TYPES = (forms.MULTIPART, forms.URLENCODED)

Handler = Callable[[SandboxState, Mapping[str, str], Mapping[str, UploadedFile]], Tuple[int, Any]]


def mask(value: str) -> str:
    """Hide a secret in the call record, keeping the last two characters to tell keys apart."""
    return "****" + value[-2:] if len(value) >= 8 else "****"


def _masked(items: Mapping[str, str]) -> Dict[str, str]:
    return {k: mask(v) if k in SECRET_FIELDS else v for k, v in items.items()}


def result(ticket_id: int) -> Dict[str, Any]:
    return {"type": "result", "message": "Message sent.", "ticketID": ticket_id}


def error(message: str) -> Dict[str, Any]:
    return {"status": "error", "message": message}


class NoAnswer(Exception):
    """The call ends without an answer: the connection is closed (drop or hang fault)."""


async def _read_body(
    request: web.Request,
) -> Tuple[str, Dict[str, str], Dict[str, UploadedFile], Optional[Tuple[int, Dict[str, Any]]]]:
    """The media type, form fields and file parts, or the error answer when the body is unreadable."""
    if request.method == "GET":
        return (request.content_type if request.body_exists else ""), {}, {}, None
    raw = request.headers.get(hdrs.CONTENT_TYPE, "")
    media = forms.parse_media_type(raw)
    if media is None or media.type not in FORM_TYPES:
        content_type = request.content_type
        if content_type in FORM_TYPES:
            problem = f"Content-Type: malformed parameters in {raw!r}"
        else:
            problem = (
                f"Content-Type: must be multipart/form-data or "
                f"application/x-www-form-urlencoded, got {content_type!r}"
            )
        return (content_type if request.body_exists else ""), {}, {}, (400, error(problem))
    content_type = media.type if request.body_exists else ""
    try:
        form = await forms.read_form(request, media)
    except forms.FormError as exc:
        return content_type, {}, {}, (exc.status, error(exc.message))
    return content_type, form.fields, form.files, None


def _api_key_problem(state: SandboxState, request: web.Request) -> Optional[str]:
    expected = state.config.api_key
    if expected is None or not request.path.startswith("/api/"):
        return None
    given = request.query.get("apiKey")
    if given is None:
        return "apiKey: is required (add ?apiKey=KEY to the URL)"
    if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        return "apiKey: is not valid for this account"
    return None


async def _no_answer(request: web.Request, decision: FaultDecision) -> None:
    if decision.hang_seconds is not None:
        stopping = stopping_of(request.app)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), decision.hang_seconds)
    raise NoAnswer()


def _fault_answer(decision: FaultDecision) -> web.Response:
    headers = {}
    if decision.retry_after is not None:
        headers["Retry-After"] = str(decision.retry_after)
    status = decision.status or 500
    return web.json_response(
        error(f"sandbox fault: status {status}"), status=status, headers=headers
    )


def endpoint_view(endpoint: str, handler: Handler) -> Callable[[web.Request], Any]:
    async def view(request: web.Request) -> web.StreamResponse:
        state = state_of(request.app)
        content_type, fields, files, unreadable = await _read_body(request)
        query = {k: v for k, v in request.query.items()}
        form: Dict[str, str] = dict(query) if request.method == "GET" else fields
        call = RecordedCall(
            at=time.time(),
            method=request.method,
            path=request.path,
            endpoint=endpoint,
            query=_masked(query),
            content_type=content_type,
            fields=_masked(fields),
            files=[
                FilePart(name, f.filename, len(f.data), f.content_type) for name, f in files.items()
            ],
        )
        state.record_call(call)
        decision = state.faults.decide(endpoint)
        call.fault = decision.describe()
        if decision.latency_ms:
            await asyncio.sleep(decision.latency_ms / 1000)
        if decision.replaces_answer and not decision.process_first:
            if decision.hang_seconds is not None or decision.drop:
                await _no_answer(request, decision)
            answer = _fault_answer(decision)
            call.status, call.body = answer.status, error(f"sandbox fault: status {answer.status}")
            return answer

        status: int
        body: Any
        key_problem = _api_key_problem(state, request)
        if key_problem is not None:
            status, body = 401, error(key_problem)
        elif unreadable is not None:
            status, body = unreadable
        else:
            try:
                status, body = handler(state, form, files)
            except FieldRuleError as exc:
                status, body = 400, error(str(exc))
        if status >= 400:
            logger.info("%s answered %s: %s", endpoint, status, body.get("message"))
        if decision.replaces_answer:
            if decision.hang_seconds is not None or decision.drop:
                await _no_answer(request, decision)
            answer = _fault_answer(decision)
            call.status, call.body = answer.status, error(f"sandbox fault: status {answer.status}")
            return answer
        call.status, call.body = status, body
        return web.json_response(body, status=status)

    return view


def _unknown_chat(field: str, chat_session_id: str) -> FieldRuleError:
    return FieldRuleError(
        field,
        f"no chat with id {chat_session_id}; start it with notifyUserNewChatMessage first",
    )


def new_chat_message(
    state: SandboxState, form: Mapping[str, str], files: Mapping[str, UploadedFile]
) -> Tuple[int, Any]:
    request = validation.new_chat_message(form, state.config.chat_account_token)
    chat = state.customer_message(request)
    return 200, result(chat.ticket_id)


def add_attachment(
    state: SandboxState, form: Mapping[str, str], files: Mapping[str, UploadedFile]
) -> Tuple[int, Any]:
    request = validation.attachment(
        form, files, state.config.chat_account_token, state.config.max_file_bytes
    )
    try:
        chat = state.customer_attachment(request)
    except UnknownChat:
        raise _unknown_chat("sessionID", request.session_id) from None
    return 200, result(chat.ticket_id)


def chat_event(
    state: SandboxState, form: Mapping[str, str], files: Mapping[str, UploadedFile]
) -> Tuple[int, Any]:
    request = validation.chat_event(form, state.config.chat_account_token)
    try:
        chat = state.customer_event(request)
    except UnknownChat:
        raise _unknown_chat("chatSessionID", request.chat_session_id) from None
    return 200, result(chat.ticket_id)


def end_chat(
    state: SandboxState, form: Mapping[str, str], files: Mapping[str, UploadedFile]
) -> Tuple[int, Any]:
    request = validation.end_chat(form, state.config.chat_account_token)
    try:
        chat = state.customer_end(request)
    except UnknownChat:
        raise _unknown_chat("chatSessionID", request.chat_session_id) from None
    return 200, result(chat.ticket_id)


def chatbot_log(
    state: SandboxState, form: Mapping[str, str], files: Mapping[str, UploadedFile]
) -> Tuple[int, Any]:
    ticket = state.chatbot_log(validation.chatbot_log(form))
    return 200, result(ticket.ticket_id)


def chat_config_object(state: SandboxState) -> Dict[str, Any]:
    """A requestChatConfig answer. Only `instructions` is documented; the rest is plausible."""
    instructions = [{"type": "set_language", "language": "en"}]
    if not state.agents_online:
        instructions.append({"type": "hide_reason_no_agents_available"})
    return {
        "status": "ok",
        "config": {
            "title": "Sandbox support",
            "language": "en",
            "color": "#1f6feb",
            "hideWhenNoAgentsAvailable": True,
            "welcomeMessage": "Hi! How can we help?",
        },
        "instructions": instructions,
    }


def chat_config_get(
    state: SandboxState, form: Mapping[str, str], files: Mapping[str, UploadedFile]
) -> Tuple[int, Any]:
    validation.chat_config_tokens(
        form, state.config.chat_account_token, state.config.chat_server_token
    )
    return 200, chat_config_object(state)


def chat_config_post(
    state: SandboxState, form: Mapping[str, str], files: Mapping[str, UploadedFile]
) -> Tuple[int, Any]:
    validation.chat_config_post(form, state.config.chat_account_token)
    return 200, chat_config_object(state)


def add_routes(app: web.Application) -> None:
    routes = [
        (
            "POST",
            "/api/v2/chat/notifyUserNewChatMessage",
            "notifyUserNewChatMessage",
            new_chat_message,
        ),
        ("POST", "/api/v2/chat/addAttachment", "addAttachment", add_attachment),
        ("POST", "/api/v2/chat/notifyUserNewChatEvent", "notifyUserNewChatEvent", chat_event),
        ("POST", "/api/v2/message/notifyUserEndChat", "notifyUserEndChat", end_chat),
        ("POST", "/api/v2/chat/notifyUserEndChat", "notifyUserEndChat", end_chat),
        ("POST", "/api/v2/message/chatbot", "chatbot", chatbot_log),
        ("GET", "/requestChatConfig", "requestChatConfig", chat_config_get),
        ("POST", "/api/v2/chat/requestChatConfig", "requestChatConfig", chat_config_post),
    ]
    for method, path, endpoint, handler in routes:
        app.router.add_route(method, path, endpoint_view(endpoint, handler))
