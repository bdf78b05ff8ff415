"""The agent's actions, sent to the bot's hookpoints exactly as Omnidesk sends them.

POST {chatServer}/messageForCustomer   picture, name, message, sessionID
POST {chatServer}/uploadForCustomer    file, sessionID
POST {chatServer}/typingIndicatorForCustomer  Typing ("true"/"false"), SessionID
POST {chatServer}/endSession           sessionID

Each body is multipart/form-data, each call has a bounded timeout, and whatever
happens (an answer of any status, a timeout, a refused connection) comes back
as a HookpointResult: a failed call is shown, never hidden.
"""

import asyncio
import logging
from typing import List, Optional, Tuple

import aiohttp

from omnidesk_sandbox.state import Chat, HookpointResult

logger = logging.getLogger(__name__)

MAX_BODY_SHOWN = 4096

# (name, value, filename, content type); filename None for a text field.
Part = Tuple[str, object, Optional[str], Optional[str]]


def hookpoint_url(chat_server: str, hookpoint: str) -> str:
    """{chatServer}/{hookpoint}; a chatServer without a scheme is taken as http://."""
    base = chat_server if "://" in chat_server else "http://" + chat_server
    return base.rstrip("/") + "/" + hookpoint


def _multipart(parts: List[Part]) -> aiohttp.MultipartWriter:
    writer = aiohttp.MultipartWriter("form-data")
    for name, value, filename, content_type in parts:
        if filename is None:
            part = writer.append(str(value), {"Content-Type": "text/plain; charset=utf-8"})
            part.set_content_disposition("form-data", name=name)
        else:
            assert isinstance(value, bytes)
            part = writer.append(
                value, {"Content-Type": content_type or "application/octet-stream"}
            )
            part.set_content_disposition("form-data", name=name, filename=filename)
    return writer


class AgentDesk:
    """Sends the agent's actions. Owns one ClientSession, made inside the running loop."""

    def __init__(self, timeout: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: Optional[aiohttp.ClientSession] = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _post(self, chat: Chat, hookpoint: str, parts: List[Part]) -> HookpointResult:
        url = hookpoint_url(chat.chat_server, hookpoint)
        try:
            async with self._client().post(url, data=_multipart(parts)) as response:
                body = await response.text(errors="replace")
                result = HookpointResult(response.status, body[:MAX_BODY_SHOWN], url)
        except asyncio.TimeoutError:
            result = HookpointResult(
                None, "", url, f"no answer within {self._timeout.total:g} s (timeout)"
            )
        except aiohttp.ClientError as error:
            result = HookpointResult(
                None, "", url, f"{type(error).__name__}: {error or 'connection failed'}"
            )
        level = logging.INFO if result.ok else logging.WARNING
        logger.log(
            level,
            "hookpoint %s for chat %s: %s",
            hookpoint,
            chat.chat_session_id,
            result.status if result.error is None else result.error,
        )
        return result

    async def reply(self, chat: Chat, message: str, name: str, picture: str) -> HookpointResult:
        return await self._post(
            chat,
            "messageForCustomer",
            [
                ("picture", picture, None, None),
                ("name", name, None, None),
                ("message", message, None, None),
                ("sessionID", chat.chat_session_id, None, None),
            ],
        )

    async def typing(self, chat: Chat, typing: bool) -> HookpointResult:
        return await self._post(
            chat,
            "typingIndicatorForCustomer",
            [
                ("Typing", "true" if typing else "false", None, None),
                ("SessionID", chat.chat_session_id, None, None),
            ],
        )

    async def upload(
        self, chat: Chat, filename: str, data: bytes, content_type: str
    ) -> HookpointResult:
        return await self._post(
            chat,
            "uploadForCustomer",
            [
                ("file", data, filename, content_type),
                ("sessionID", chat.chat_session_id, None, None),
            ],
        )

    async def end(self, chat: Chat) -> HookpointResult:
        return await self._post(
            chat, "endSession", [("sessionID", chat.chat_session_id, None, None)]
        )
