"""The async Omnidesk API client: the six outbound calls of omnidesk-api.txt.

One ``OmnideskClient`` per process holds one transport (``transport.py``; by
default one ``aiohttp.ClientSession``, made lazily inside the running loop) and
is closed explicitly (``await client.close()``, or ``async with``). Every call is checked against Omnidesk's field rules before
anything is sent, goes out as ``multipart/form-data`` with ``chatAccountToken``
(and ``?apiKey=`` when one is configured), has a timeout per attempt, and is
retried with capped exponential backoff and full jitter on network errors,
timeouts, 429 and 5xx only, within a total budget. A failure raises one of the
``OmnideskError`` classes below, which says which call failed, the HTTP status
and Omnidesk's message, and never a token.

This module imports nothing from rasa, rasa_sdk or sanic: the action server
uses it too.
"""

import asyncio
import email.utils
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from datetime import timezone
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    cast,
)

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from yarl import URL

from connectors.omnidesk import rules
from connectors.omnidesk.settings import OmnideskSettings
from connectors.omnidesk.transport import (
    MAX_ANSWER_BYTES,
    AiohttpTransport,
    Request,
    Timeout,
    Transport,
    TransportError,
    TransportTimeout,
)

logger = logging.getLogger(__name__)

# The names of the calls, as Omnidesk's paths spell them; they appear in errors and logs.
NEW_CHAT_MESSAGE = "notifyUserNewChatMessage"
ADD_ATTACHMENT = "addAttachment"
NEW_CHAT_EVENT = "notifyUserNewChatEvent"
END_CHAT = "notifyUserEndChat"
CHATBOT_LOG = "chatbot"
REQUEST_CHAT_CONFIG = "requestChatConfig"

NO_AGENTS_INSTRUCTION = "hide_reason_no_agents_available"

USER_AGENT = "rasa-omnidesk/0.1"

_TEXT_PART = "text/plain; charset=utf-8"
_MASK = "***"


# --- errors ------------------------------------------------------------------


class OmnideskError(Exception):
    """An Omnidesk call failed. Says which call, the HTTP status and Omnidesk's message.

    ``retryable`` tells the caller whether trying the same call later may work
    (Omnidesk was unreachable or overloaded) or not (the request itself was refused).
    """

    def __init__(
        self,
        call: str,
        reason: str,
        *,
        status: Optional[int] = None,
        omnidesk_message: Optional[str] = None,
        retryable: bool = False,
    ) -> None:
        self.call = call
        self.status = status
        self.omnidesk_message = omnidesk_message
        self.retryable = retryable
        self.reason = reason
        # Not super(): OmnideskValidationError is a FieldRuleError too, whose
        # constructor takes other arguments.
        Exception.__init__(self, f"Omnidesk {call} failed: {reason}")


class OmnideskValidationError(OmnideskError, rules.FieldRuleError):
    """A value breaks a field rule (``rules.FieldRuleError``); nothing was sent.

    ``field``, ``rule`` and ``status`` are the rule's: ``status`` is the one
    that fits the refusal (400, 413 for a file too large, 415 for a file type),
    not an answer from Omnidesk, which was never asked.
    """

    status: int

    def __init__(self, call: str, field: str, rule: str, status: int = 400) -> None:
        rules.FieldRuleError.__init__(self, field, rule, status)
        OmnideskError.__init__(self, call, f"not sent: {field}: {rule}", status=status)


class OmnideskHTTPError(OmnideskError):
    """Omnidesk refused the call: a non-2xx status that is not retried, or an error body."""


class OmnideskUnavailable(OmnideskError):
    """Omnidesk could not be reached, timed out or stayed overloaded (429/5xx) for every attempt."""

    def __init__(
        self,
        call: str,
        reason: str,
        *,
        status: Optional[int] = None,
        omnidesk_message: Optional[str] = None,
        attempts: int = 0,
    ) -> None:
        self.attempts = attempts
        super().__init__(
            call, reason, status=status, omnidesk_message=omnidesk_message, retryable=True
        )


class OmnideskResponseError(OmnideskError):
    """Omnidesk answered 2xx with a body that is not the JSON object we expect."""


# --- answers -----------------------------------------------------------------


@dataclass(frozen=True)
class ChatResult:
    """Omnidesk's success answer: ``{"type": "result", "message": ..., "ticketID": ...}``."""

    ticket_id: Optional[int]
    message: Optional[str]
    raw: Dict[str, Any] = field(repr=False)

    @classmethod
    def from_answer(cls, answer: Dict[str, Any]) -> "ChatResult":
        message = answer.get("message")
        return cls(
            ticket_id=_ticket_id(answer.get("ticketID")),
            message=message if isinstance(message, str) else None,
            raw=answer,
        )


@dataclass(frozen=True)
class ChatConfig:
    """requestChatConfig's answer; ``agents_available`` is all we read of it."""

    agents_available: bool
    raw: Dict[str, Any] = field(repr=False)

    @classmethod
    def from_answer(cls, answer: Dict[str, Any]) -> "ChatConfig":
        return cls(agents_available=not _has_no_agents_instruction(answer), raw=answer)


def _ticket_id(value: Any) -> Optional[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _has_no_agents_instruction(answer: Any) -> bool:
    """Whether any object anywhere in the answer says ``"type": "hide_reason_no_agents_available"``.

    omnidesk-api.txt puts it among ``instructions`` without saying how deep; we
    look everywhere rather than guess the nesting.
    """
    stack: List[Any] = [answer]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == NO_AGENTS_INSTRUCTION:
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


# --- injectable seams ---------------------------------------------------------


class RandomSource(Protocol):
    """Where the jitter comes from; ``random.Random`` is one."""

    def uniform(self, a: float, b: float) -> float: ...


Sleep = Callable[[float], Awaitable[Any]]


# --- field rules -----------------------------------------------------------------

_T = TypeVar("_T")


def _check(call: str, check: Callable[[Any], _T], value: Any) -> _T:
    """Apply one of ``rules``' checks; a broken rule is this call's validation error."""
    try:
        return check(value)
    except rules.FieldRuleError as error:
        raise OmnideskValidationError(call, error.field, error.rule, error.status) from None


# --- the client ----------------------------------------------------------------


class _Part(NamedTuple):
    """One part of a multipart/form-data body."""

    name: str
    value: Union[str, bytes]
    filename: Optional[str] = None
    content_type: Optional[str] = None


class _Failure(NamedTuple):
    """Why an attempt failed in a way worth retrying."""

    reason: str
    status: Optional[int] = None
    omnidesk_message: Optional[str] = None
    retry_after: Optional[float] = None


class OmnideskClient:
    """The six Omnidesk calls. Use one per process and close it on shutdown.

    ``transport`` carries the requests (default: ``AiohttpTransport``); the
    client owns it and closes it. It, ``rng`` and ``sleep`` are the seams for
    tests: a ``MockTransport`` answers as Omnidesk would, ``rng`` and ``sleep``
    pin the backoff schedule, and nothing is patched.
    """

    def __init__(
        self,
        settings: OmnideskSettings,
        *,
        rng: Optional[RandomSource] = None,
        sleep: Optional[Sleep] = None,
        transport: Optional[Transport] = None,
    ) -> None:
        # Settings built by from_env/from_credentials are valid already; a
        # hand-built one is checked here, once, rather than on every call.
        call = "OmnideskClient"
        self._chat_server = _check(call, rules.CHAT_SERVER.check, settings.chat_server)
        self._account_token = _check(
            call, rules.CHAT_ACCOUNT_TOKEN.check, settings.chat_account_token.reveal()
        )
        _check(
            call,
            rules.CHAT_SERVER_TOKEN.check,
            settings.chat_server_token.reveal(),
        )
        self._settings = settings
        self._rng: RandomSource = rng if rng is not None else random.Random()  # noqa: S311 -- jitter, not crypto
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._secrets = tuple(
            spelling
            for secret in (
                settings.chat_account_token,
                settings.chat_server_token,
                settings.hookpoint_secret,
                settings.api_key,
            )
            if secret is not None
            for spelling in _spellings(secret.reveal())
        )
        self._transport: Transport = transport if transport is not None else AiohttpTransport()
        self._closed = False

    @property
    def settings(self) -> OmnideskSettings:
        return self._settings

    async def __aenter__(self) -> "OmnideskClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Close the transport (the HTTP session). The client cannot be used afterwards."""
        self._closed = True
        await self._transport.close()

    # --- the calls ---

    async def notify_user_new_chat_message(
        self,
        *,
        chat_session_id: str,
        message: str,
        message_number: Optional[int] = None,
        url: Optional[str] = None,
        customer_name: Optional[str] = None,
        email_address: Optional[str] = None,
        phone_number: Optional[str] = None,
    ) -> ChatResult:
        """A customer message (or the first one, which opens the chat) to the agent.

        ``customer_name`` is cleaned to fit Omnidesk's pattern and left out if
        nothing is left of it.
        """
        call = NEW_CHAT_MESSAGE
        parts: List[_Part] = []
        if message_number is not None:
            number = _check(call, rules.check_message_number, message_number)
            parts.append(_Part("messageNumber", str(number)))
        if url is not None:
            parts.append(_Part("url", _check(call, rules.URL.check, url)))
        parts.append(_Part("message", _check(call, rules.MESSAGE.check, message)))
        parts.append(_Part("channelID", str(rules.CHANNEL_ID_LIVE_CHAT)))
        parts.append(self._token_part())
        parts.append(
            _Part("chatSessionID", _check(call, rules.CHAT_SESSION_ID.check, chat_session_id))
        )
        parts.append(_Part("chatServer", self._chat_server_for(call, chat_session_id)))
        name = rules.clean_customer_name(customer_name)
        if name is not None:
            parts.append(_Part("customerName", _check(call, rules.CUSTOMER_NAME.check, name)))
        if email_address is not None:
            parts.append(
                _Part("emailAddress", _check(call, rules.EMAIL_ADDRESS.check, email_address))
            )
        if phone_number is not None:
            parts.append(_Part("phoneNumber", _check(call, rules.PHONE_NUMBER.check, phone_number)))
        answer = await self._post(
            call, "/api/v2/chat/notifyUserNewChatMessage", parts, chat_session_id
        )
        return ChatResult.from_answer(answer)

    async def add_attachment(
        self, *, chat_session_id: str, filename: str, content: bytes, content_type: str
    ) -> ChatResult:
        """A file from the customer to the agent.

        The file is checked by ``rules.check_upload`` (at most
        ``max_upload_bytes``, a concrete MIME type, parameters ignored) and sent
        with its bare MIME type, under the name ``rules.safe_filename`` makes.
        """
        call = ADD_ATTACHMENT
        session_id = _check(call, rules.SESSION_ID.check, chat_session_id)
        if not isinstance(content, (bytes, bytearray)) or not content:
            raise OmnideskValidationError(call, "file", "must be a non-empty bytes object")
        mime = _check(
            call,
            lambda kind: rules.check_upload(len(content), kind, self._settings.max_upload_bytes),
            content_type,
        )
        parts = [
            _Part(
                "file", bytes(content), filename=rules.safe_filename(filename), content_type=mime
            ),
            _Part("chatServer", self._chat_server_for(call, session_id)),
            self._token_part(),
            _Part("sessionID", session_id),
        ]
        answer = await self._post(call, "/api/v2/chat/addAttachment", parts, chat_session_id)
        return ChatResult.from_answer(answer)

    async def notify_user_new_chat_event(self, *, chat_session_id: str, event: str) -> ChatResult:
        """A customer event: startedtyping, stoppedtyping, expandedchat or minimizedchat."""
        call = NEW_CHAT_EVENT
        session_id = _check(call, rules.CHAT_SESSION_ID.check, chat_session_id)
        parts = [
            _Part("chatServer", self._chat_server_for(call, session_id)),
            _Part("chatSessionID", session_id),
            _Part("event", _check(call, rules.check_event, event)),
            self._token_part(),
        ]
        answer = await self._post(
            call, "/api/v2/chat/notifyUserNewChatEvent", parts, chat_session_id
        )
        return ChatResult.from_answer(answer)

    async def notify_user_end_chat(self, *, chat_session_id: str) -> ChatResult:
        """Tell Omnidesk the chat ended on our side. The path is settings.end_chat_path."""
        call = END_CHAT
        session_id = _check(call, rules.CHAT_SESSION_ID.check, chat_session_id)
        parts = [
            _Part("chatSessionID", session_id),
            _Part("chatServer", self._chat_server_for(call, session_id)),
            self._token_part(),
        ]
        answer = await self._post(call, self._settings.end_chat_path, parts, chat_session_id)
        return ChatResult.from_answer(answer)

    async def create_chatbot_log(
        self,
        *,
        message: str,
        subject: str,
        from_address: Optional[str] = None,
        brand_id: Optional[str] = None,
    ) -> ChatResult:
        """Push the conversation so far (markdown) to Omnidesk, where it becomes a ticket."""
        call = CHATBOT_LOG
        parts: List[_Part] = []
        if from_address is not None:
            parts.append(_Part("from", _check(call, rules.check_from_address, from_address)))
        parts.append(_Part("subject", _check(call, rules.SUBJECT.check, subject)))
        parts.append(_Part("message", _check(call, rules.MESSAGE.check, message)))
        brand = brand_id if brand_id is not None else self._settings.brand_id
        if brand is not None:
            parts.append(_Part("brandID", _check(call, rules.BRAND_ID.check, brand)))
        parts.append(self._token_part())
        answer = await self._post(call, "/api/v2/message/chatbot", parts, None)
        return ChatResult.from_answer(answer)

    async def request_chat_config(self) -> ChatConfig:
        """Ask whether agents are online (the chat token must hide the chat when none are)."""
        params = {
            "chatAccountToken": self._account_token,
            "chatServerToken": self._settings.chat_server_token.reveal(),
        }
        answer = await self._request(
            REQUEST_CHAT_CONFIG,
            "GET",
            f"{self._settings.chat_config_url}/requestChatConfig",
            params=params,
        )
        return ChatConfig.from_answer(answer)

    # --- the wire ---

    def _chat_server_for(self, call: str, chat_session_id: str) -> str:
        """The chat's own chatServer: its hookpoints open this chat and no other."""
        return _check(
            call, rules.CHAT_SERVER.check, self._settings.chat_server_for(chat_session_id)
        )

    def _token_part(self) -> _Part:
        return _Part("chatAccountToken", self._account_token)

    async def _post(
        self, call: str, path: str, parts: Sequence[_Part], chat_session_id: Optional[str]
    ) -> Dict[str, Any]:
        return await self._request(
            call,
            "POST",
            f"{self._settings.api_url}{path}",
            parts=parts,
            chat_session_id=chat_session_id,
        )

    async def _request(
        self,
        call: str,
        method: str,
        url: str,
        *,
        parts: Sequence[_Part] = (),
        params: Optional[Mapping[str, str]] = None,
        chat_session_id: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Send one call: timeouts, retries, status mapping and logging live here only."""
        if self._closed:
            raise RuntimeError("OmnideskClient is closed; make a new one")
        settings = self._settings
        query = dict(params or {})
        if settings.api_key is not None:
            query["apiKey"] = settings.api_key.reveal()
        if query:
            url = str(URL(url).with_query(query))
        headers = {"User-Agent": USER_AGENT}
        body = b""
        if parts:
            body, headers["Content-Type"] = await _multipart(parts)
        started = time.monotonic()
        deadline = started + settings.retry_budget
        attempt = 0
        status: Optional[int] = None
        failure: Optional[_Failure] = None
        try:
            while True:
                remaining = deadline - time.monotonic()
                if failure is not None and remaining <= 0:
                    raise self._give_up(call, "retry budget spent", failure, attempt)
                attempt += 1
                status = None
                timeout = Timeout(
                    total=min(settings.request_timeout, remaining),
                    connect=min(settings.connect_timeout, remaining),
                )
                request = Request(method, url, headers, body, timeout)
                try:
                    answer = await self._transport.handle_request(request)
                except TransportTimeout:
                    failure = _Failure(f"no answer within {timeout.total:.3g} s")
                except TransportError as error:
                    failure = _Failure(self._redact(str(error)))
                else:
                    status = answer.status
                    if status != 429 and status < 500:
                        return self._read_answer(call, status, answer.body)
                    failure = _Failure(
                        f"HTTP {status}",
                        status,
                        self._omnidesk_message(_json_object(answer.body)),
                        _retry_after(answer.header("Retry-After")),
                    )
                delay = self._delay_before_retry(call, attempt, failure, deadline)
                logger.warning(
                    "Omnidesk %s attempt %d of %d failed (%s%s); retrying in %.2f s "
                    "[chat_session_id=%s]",
                    call,
                    attempt,
                    settings.max_attempts,
                    failure.reason,
                    f": {failure.omnidesk_message}" if failure.omnidesk_message else "",
                    delay,
                    chat_session_id,
                )
                await self._sleep(delay)
        finally:
            logger.debug(
                "Omnidesk %s: status=%s attempt=%d elapsed=%.3fs chat_session_id=%s",
                call,
                status,
                attempt,
                time.monotonic() - started,
                chat_session_id,
            )

    def _give_up(
        self, call: str, why: str, failure: _Failure, attempts: int
    ) -> OmnideskUnavailable:
        detail = f"; last: {failure.reason}"
        if failure.omnidesk_message:
            detail += f" ({failure.omnidesk_message})"
        return OmnideskUnavailable(
            call,
            f"{why} after {attempts} attempt{'s' if attempts != 1 else ''}{detail}",
            status=failure.status,
            omnidesk_message=failure.omnidesk_message,
            attempts=attempts,
        )

    def _delay_before_retry(
        self, call: str, attempt: int, failure: _Failure, deadline: float
    ) -> float:
        """How long to wait before the next attempt, or raise when there will be none."""
        settings = self._settings
        if attempt >= settings.max_attempts:
            raise self._give_up(call, "Omnidesk unavailable", failure, attempt)
        # Full jitter: anywhere from 0 to the capped exponential step.
        step = min(settings.backoff_max, settings.backoff_base * 2 ** (attempt - 1))
        delay = self._rng.uniform(0.0, step)
        remaining = deadline - time.monotonic()
        if failure.retry_after is not None:
            if failure.retry_after >= remaining:
                raise self._give_up(
                    call,
                    f"Omnidesk asks to retry after {failure.retry_after:g} s, beyond the retry "
                    f"budget ({settings.retry_budget:g} s, {max(remaining, 0):.2f} s left)",
                    failure,
                    attempt,
                )
            delay = max(delay, failure.retry_after)
        if delay >= remaining:
            raise self._give_up(
                call, f"retry budget of {settings.retry_budget:g} s spent", failure, attempt
            )
        return delay

    def _read_answer(self, call: str, status: int, body: bytes) -> Dict[str, Any]:
        """Map a final (not retried) answer to its data, or to the error it is."""
        answer = _json_object(body)
        message = self._omnidesk_message(answer)
        if not 200 <= status < 300:
            reason = f"HTTP {status}" + (f": {message}" if message else "")
            raise OmnideskHTTPError(call, reason, status=status, omnidesk_message=message)
        if answer is None:
            raise OmnideskResponseError(
                call,
                f"HTTP {status} with a body that is not a JSON object "
                f"({len(body)} bytes{', cut off' if len(body) > MAX_ANSWER_BYTES else ''})",
                status=status,
            )
        if _is_error_body(answer):
            reason = f"HTTP {status} with an error body" + (f": {message}" if message else "")
            raise OmnideskHTTPError(call, reason, status=status, omnidesk_message=message)
        return answer

    def _omnidesk_message(self, answer: Optional[Mapping[str, Any]]) -> Optional[str]:
        """Omnidesk's own words from an (error) answer, tokens masked, or None."""
        if answer is None:
            return None
        for key in ("message", "error"):
            value = answer.get(key)
            if isinstance(value, str) and value.strip():
                return self._redact(value.strip()[:500])
        return None

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, _MASK)
        return text


class _Collect:
    """Where aiohttp's multipart writer writes the body, to be sent as bytes."""

    def __init__(self) -> None:
        self.chunks: List[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self.chunks.append(bytes(chunk))


async def _multipart(parts: Sequence[_Part]) -> Tuple[bytes, str]:
    """The multipart/form-data body of ``parts`` and its Content-Type (with the boundary).

    aiohttp's own writer makes the bytes, so they are what aiohttp would send.
    A content type on every part is what makes it multipart/form-data even
    when no part is a file: Omnidesk documents multipart for every call.
    """
    form = aiohttp.FormData()
    for part in parts:
        # A lone surrogate cannot be encoded as UTF-8; it goes as U+FFFD, not as a crash.
        value = rules.valid_text(part.value) if isinstance(part.value, str) else part.value
        form.add_field(
            part.name,
            value,
            filename=rules.valid_text(part.filename) if part.filename else part.filename,
            content_type=part.content_type or _TEXT_PART,
        )
    payload = form()
    sink = _Collect()
    # The multipart writer only calls write(); the rest of a stream writer
    # (headers, chunking, compression) belongs to the transport.
    await payload.write(cast(AbstractStreamWriter, sink))
    return b"".join(sink.chunks), payload.content_type


def _spellings(secret: str) -> Tuple[str, ...]:
    """A secret as it may show in a text: as it is, and as a query string encodes it.

    A network error's text may hold the request's URL, apiKey and all; an API
    key with '+', '/' or '=' shows there percent-encoded.
    """
    encoded = URL.build(query={"k": secret}).raw_query_string[len("k=") :]
    return (secret,) if encoded == secret else (secret, encoded)


def _json_object(body: bytes) -> Optional[Dict[str, Any]]:
    if len(body) > MAX_ANSWER_BYTES:
        return None
    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def _is_error_body(answer: Mapping[str, Any]) -> bool:
    return answer.get("status") == "error" or answer.get("type") == "error"


def _retry_after(value: Optional[str]) -> Optional[float]:
    """Retry-After in seconds from now: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
