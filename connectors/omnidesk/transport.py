"""How the client's requests reach Omnidesk: one small seam, as httpx's transports are.

``OmnideskClient`` prepares each attempt as a ``Request`` (method, URL with its
query, headers, body bytes, timeout) and hands it to a ``Transport``, which
answers a ``Response`` (status, headers, body) or raises ``TransportError``.
Everything else (field rules, retries, backoff, the retry budget, mapping an
answer to data or to an error) stays in the client, the same whichever
transport carries the bytes.

- ``AiohttpTransport``, the default: one ``aiohttp.ClientSession``, made lazily
  inside the running loop and closed explicitly.
- ``MockTransport(handler)``: answers from a function, with no socket; tests
  script Omnidesk with it.
"""

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Optional, Protocol, Union

import aiohttp
from yarl import URL

# An answer larger than this is not one of Omnidesk's: read no further.
MAX_ANSWER_BYTES = 1024 * 1024
_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Timeout:
    """Seconds one attempt may take in all (``total``) and to connect (``connect``)."""

    total: float
    connect: float


@dataclass(frozen=True)
class Request:
    """One attempt, ready to send. ``url`` holds the query, already encoded."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    timeout: Timeout


@dataclass(frozen=True)
class Response:
    """Omnidesk's answer: its status, headers and body (cut off past ``MAX_ANSWER_BYTES``)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> Optional[str]:
        """A header's value, whatever the case of its name; None when absent."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


class TransportError(Exception):
    """No answer: the connection could not be made, or broke. The text says how."""


class TransportTimeout(TransportError):
    """No answer within the request's timeout."""


class Transport(Protocol):
    """What carries a prepared request to Omnidesk and brings back the answer.

    ``handle_request`` answers within ``request.timeout`` or raises
    ``TransportTimeout``; a connection that fails raises ``TransportError``. It
    follows no redirect. ``close`` ends whatever the transport holds open.
    """

    async def handle_request(self, request: Request) -> Response: ...

    async def close(self) -> None: ...


class AiohttpTransport:
    """The transport on the wire: one ``aiohttp.ClientSession`` for every request.

    The session is made at the first request, inside the running loop, and is
    bound to that loop; ``close()`` ends it, after which the transport refuses
    requests. No cookies are kept and no redirect is followed.
    """

    def __init__(self, *, max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self._max_answer_bytes = max_answer_bytes
        self._session: Optional[aiohttp.ClientSession] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def handle_request(self, request: Request) -> Response:
        session = self._session_for_this_loop()
        timeout = aiohttp.ClientTimeout(
            total=request.timeout.total, connect=request.timeout.connect
        )
        try:
            async with session.request(
                request.method,
                URL(request.url, encoded=True),
                headers=dict(request.headers),
                data=request.body or None,
                timeout=timeout,
                allow_redirects=False,
            ) as answer:
                body = bytearray()
                async for chunk in answer.content.iter_chunked(_CHUNK_BYTES):
                    body.extend(chunk)
                    if len(body) > self._max_answer_bytes:
                        break
                return Response(answer.status, dict(answer.headers), bytes(body))
        except asyncio.TimeoutError as error:
            # Before ClientError: aiohttp's ServerTimeoutError is both.
            raise TransportTimeout(_describe(error)) from error
        except aiohttp.ClientError as error:
            raise TransportError(_describe(error)) from error

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _session_for_this_loop(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the transport is closed")
        loop = asyncio.get_running_loop()
        if self._session is None:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(
                "this transport was first used in another event loop; make one client "
                "(and transport) per loop"
            )
        return self._session


Handler = Callable[[Request], Union[Response, Awaitable[Response]]]


class MockTransport:
    """Answers every request with ``handler(request)``, plain or async; no socket.

    The handler may raise ``TransportError`` (a refused or dropped connection)
    or take its time: like a real transport, an answer later than the
    request's total timeout raises ``TransportTimeout``.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def handle_request(self, request: Request) -> Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        try:
            return await asyncio.wait_for(self._answer(request), request.timeout.total)
        except asyncio.TimeoutError as error:
            raise TransportTimeout(f"no answer within {request.timeout.total:.3g} s") from error

    async def close(self) -> None:
        self._closed = True

    async def _answer(self, request: Request) -> Response:
        answer = self.handler(request)
        if inspect.isawaitable(answer):
            return await answer
        return answer


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
