"""The async Omnidesk API client: the six outbound calls of omnidesk-api.txt.

One ``OmnideskClient`` per process holds one transport (``transport.py``; by
default one ``aiohttp.ClientSession``, made lazily inside the running loop) and
is closed explicitly (``await client.close()``, or ``async with``). Every call
is checked against Omnidesk's field rules before anything is sent and goes out
as ``multipart/form-data`` with ``chatAccountToken`` (and ``?apiKey=`` when one
is configured). ``Retrying`` (retry.py) gives it a timeout per attempt and
retries it with capped exponential backoff and full jitter on network errors,
timeouts, 429 and 5xx only, within a total budget. A failure raises one of the
``OmnideskError`` classes (errors.py, re-exported here), which says which call
failed, the HTTP status and Omnidesk's message, and never a token.

The action server uses it too, so it knows no framework (tests/architecture).
"""

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union
from urllib.parse import quote

from yarl import URL

from connectors.omnidesk import rules
from connectors.omnidesk.errors import (
    OmnideskError,
    OmnideskHTTPError,
    OmnideskResponseError,
    OmnideskUnavailable,
    OmnideskValidationError,
    Secrets,
    checked,
    read_answer,
)
from connectors.omnidesk.retry import RandomSource, Retrying, Sleep
from connectors.omnidesk.rules import (  # the call names, here too for the client's users
    ADD_ATTACHMENT,
    CHATBOT_LOG,
    END_CHAT,
    NEW_CHAT_EVENT,
    NEW_CHAT_MESSAGE,
    REQUEST_CHAT_CONFIG,
)
from connectors.omnidesk.settings import OmnideskSettings, Secret
from connectors.omnidesk.transport import AiohttpTransport, Transport

logger = logging.getLogger(__name__)

__all__ = [
    "ADD_ATTACHMENT",
    "CHATBOT_LOG",
    "END_CHAT",
    "NEW_CHAT_EVENT",
    "NEW_CHAT_MESSAGE",
    "REQUEST_CHAT_CONFIG",
    "USER_AGENT",
    "ChatConfig",
    "ChatResult",
    "OmnideskClient",
    "OmnideskError",
    "OmnideskHTTPError",
    "OmnideskResponseError",
    "OmnideskUnavailable",
    "OmnideskValidationError",
    "RandomSource",
    "Sleep",
]


NO_AGENTS_INSTRUCTION = "hide_reason_no_agents_available"

USER_AGENT = "rasa-omnidesk/0.1"

_TEXT_PART = "text/plain; charset=utf-8"


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


# --- the client ----------------------------------------------------------------


class _Part(NamedTuple):
    """One part of a multipart/form-data body."""

    name: str
    value: Union[str, bytes]
    filename: Optional[str] = None
    content_type: Optional[str] = None


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
        self._chat_server = checked(call, rules.CHAT_SERVER.check, settings.chat_server)
        self._account_token = checked(
            call, rules.CHAT_ACCOUNT_TOKEN.check, settings.chat_account_token.reveal()
        )
        checked(
            call,
            rules.CHAT_SERVER_TOKEN.check,
            settings.chat_server_token.reveal(),
        )
        self._settings = settings
        self._rng: RandomSource = rng if rng is not None else random.Random()  # noqa: S311 -- jitter, not crypto
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._secrets = Secrets(
            (
                settings.chat_account_token,
                settings.chat_server_token,
                settings.hookpoint_secret,
                settings.api_key,
            )
        )
        self._transport: Transport = transport if transport is not None else AiohttpTransport()
        self._retrying = Retrying(
            settings, self._transport, self._rng, self._sleep, self._secrets.redact
        )
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
            number = checked(call, rules.check_message_number, message_number)
            parts.append(_Part("messageNumber", str(number)))
        if url is not None:
            parts.append(_Part("url", checked(call, rules.URL.check, url)))
        parts.append(_Part("message", checked(call, rules.MESSAGE.check, message)))
        parts.append(_Part("channelID", str(rules.CHANNEL_ID_LIVE_CHAT)))
        parts.append(self._token_part())
        parts.append(
            _Part("chatSessionID", checked(call, rules.CHAT_SESSION_ID.check, chat_session_id))
        )
        parts.append(_Part("chatServer", self._chat_server_for(call, chat_session_id)))
        name = rules.clean_customer_name(customer_name)
        if name is not None:
            parts.append(_Part("customerName", checked(call, rules.CUSTOMER_NAME.check, name)))
        if email_address is not None:
            parts.append(
                _Part("emailAddress", checked(call, rules.EMAIL_ADDRESS.check, email_address))
            )
        if phone_number is not None:
            parts.append(
                _Part("phoneNumber", checked(call, rules.PHONE_NUMBER.check, phone_number))
            )
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
        session_id = checked(call, rules.SESSION_ID.check, chat_session_id)
        if not isinstance(content, (bytes, bytearray)) or not content:
            raise OmnideskValidationError(call, "file", "must be a non-empty bytes object")
        mime = checked(
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
        session_id = checked(call, rules.CHAT_SESSION_ID.check, chat_session_id)
        parts = [
            _Part("chatServer", self._chat_server_for(call, session_id)),
            _Part("chatSessionID", session_id),
            _Part("event", checked(call, rules.check_event, event)),
            self._token_part(),
        ]
        answer = await self._post(
            call, "/api/v2/chat/notifyUserNewChatEvent", parts, chat_session_id
        )
        return ChatResult.from_answer(answer)

    async def notify_user_end_chat(self, *, chat_session_id: str) -> ChatResult:
        """Tell Omnidesk the chat ended on our side. The path is settings.end_chat_path."""
        call = END_CHAT
        session_id = checked(call, rules.CHAT_SESSION_ID.check, chat_session_id)
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
            parts.append(_Part("from", checked(call, rules.check_from_address, from_address)))
        parts.append(_Part("subject", checked(call, rules.SUBJECT.check, subject)))
        parts.append(_Part("message", checked(call, rules.MESSAGE.check, message)))
        brand = brand_id if brand_id is not None else self._settings.brand_id
        if brand is not None:
            parts.append(_Part("brandID", checked(call, rules.BRAND_ID.check, brand)))
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
        return checked(
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
        """Send one call: its URL and form here, retries in retry.py, the answer's meaning in errors.py."""
        if self._closed:
            raise RuntimeError("OmnideskClient is closed; make a new one")
        url, headers, body = await _prepared(url, params, self._settings.api_key, parts)
        status, answer = await self._retrying.send(
            call, method, url, headers, body, chat_session_id
        )
        return read_answer(call, status, answer, self._secrets.redact)


async def _prepared(
    url: str, params: Optional[Mapping[str, str]], api_key: Optional[Secret], parts: Sequence[_Part]
) -> Tuple[str, Dict[str, str], bytes]:
    """A call's URL (with ``?apiKey=`` when one is configured), headers and body."""
    query = dict(params or {})
    if api_key is not None:
        query["apiKey"] = api_key.reveal()
    if query:
        url = str(URL(url).with_query(query))
    headers = {"User-Agent": USER_AGENT}
    body = b""
    if parts:
        body, headers["Content-Type"] = _multipart(parts)
    return url, headers, body


def _multipart(parts: Sequence[_Part]) -> Tuple[bytes, str]:
    """The multipart/form-data body of ``parts`` and its Content-Type (with the boundary).

    Written here, byte for byte as aiohttp's own multipart writer writes it
    (tests/client/test_client_calls.py holds the two side by side), without the
    writer's stream machinery, which cost a quarter of a relayed turn's CPU. A
    content type on every part is what makes it multipart/form-data even when
    no part is a file: Omnidesk documents multipart for every call.
    """
    boundary = uuid.uuid4().hex
    dash = f"--{boundary}\r\n".encode("ascii")
    chunks: List[bytes] = []
    for part in parts:
        # A lone surrogate cannot be encoded as UTF-8; it goes as U+FFFD, not as a crash.
        if isinstance(part.value, str):
            data = rules.valid_text(part.value).encode("utf-8")
        else:
            data = bytes(part.value)
        disposition = f'form-data; name="{quote(part.name, "")}"'
        if part.filename:
            disposition += f'; filename="{quote(rules.valid_text(part.filename), "")}"'
        head = (
            f"Content-Type: {part.content_type or _TEXT_PART}\r\n"
            f"Content-Disposition: {disposition}\r\n\r\n"
        )
        chunks.extend((dash, head.encode("utf-8"), data, b"\r\n"))
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"
