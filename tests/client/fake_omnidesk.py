"""A scripted Omnidesk on loopback that records every request the client sends.

Tests script answers per path (status, body, headers, a hang, a dropped
connection) and read back what arrived: method, path, query, content type and
every multipart part. The client runs unchanged against it; only its random
source and sleep are swapped for recorders, through the constructor.
"""

import asyncio
import contextlib
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Set, Union

from aiohttp import web

from connectors.omnidesk.settings import OmnideskSettings

ACCOUNT_TOKEN = "AccountToken1234567890"
SERVER_TOKEN = "ServerToken0987654321"
HOOKPOINT_SECRET = "hookpoint-secret-0123456789abcdef"
API_KEY = "ApiKey-5ecret-value"
PUBLIC_URL = "https://bot.example.com"
SESSION_ID = "rasa-0123456789abcdef0123456789abcdef"
# SESSION_ID's own chatServer: the first 40 hex digits of
# HMAC-SHA256(HOOKPOINT_SECRET, "omnidesk-hookpoint:" + SESSION_ID). Pinned, because
# a change of the derivation would cut every open chat off its hookpoints.
CHAT_SERVER = f"{PUBLIC_URL}/webhooks/omnidesk/hook/d9a3b086f69c2f50dd744129a609c70b7c46294c"
SUCCESS = {"type": "result", "message": "Message sent.", "ticketID": 12312}


@dataclass
class Part:
    name: str
    filename: Optional[str]
    content_type: Optional[str]
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")


@dataclass
class Request:
    method: str
    path: str
    query: Dict[str, str]
    content_type: str
    parts: List[Part]
    arrived: float

    @property
    def fields(self) -> Dict[str, str]:
        """The text parts by name (file parts left out)."""
        return {part.name: part.text for part in self.parts if part.filename is None}

    def part(self, name: str) -> Part:
        (found,) = [part for part in self.parts if part.name == name]
        return found


@dataclass
class Reply:
    """One scripted answer. Without a body: Omnidesk's success body for 2xx, its error body otherwise."""

    status: int = 200
    body: Union[Dict[str, Any], str, None] = None
    headers: Dict[str, str] = field(default_factory=dict)
    hang: float = 0.0
    drop: bool = False

    def payload(self) -> Union[Dict[str, Any], str]:
        if self.body is not None:
            return self.body
        if 200 <= self.status < 300:
            return dict(SUCCESS)
        return {"status": "error", "message": f"scripted {self.status}"}


class FakeOmnidesk:
    def __init__(self) -> None:
        self.requests: List[Request] = []
        self._replies: Dict[str, Deque[Reply]] = defaultdict(deque)
        self._released = asyncio.Event()
        self._handlers: Set[asyncio.Task[Any]] = set()
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self.url = ""

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to ``path`` with ``replies``, then with success."""
        self._replies[path].extend(replies)

    async def release(self) -> None:
        """End every hung answer and wait for the handlers, so none outlives the test."""
        self._released.set()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await asyncio.sleep(0)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            return await self._answer(request)
        finally:
            self._handlers.discard(task)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        parts: List[Part] = []
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            while True:
                item = await reader.next()
                if item is None:
                    break
                parts.append(
                    Part(
                        name=item.name or "",
                        filename=item.filename,
                        content_type=item.headers.get("Content-Type"),
                        data=bytes(await item.read()),
                    )
                )
        else:
            await request.read()
        self.requests.append(
            Request(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                content_type=request.content_type,
                parts=parts,
                arrived=time.monotonic(),
            )
        )
        queue = self._replies[request.path]
        reply = queue.popleft() if queue else Reply()
        if reply.drop:
            assert request.transport is not None
            # abort(), not close(): close() lets a newer aiohttp server still write
            # the answer below before the connection goes.
            request.transport.abort()
            return web.Response()
        if reply.hang:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._released.wait(), timeout=reply.hang)
        body = reply.payload()
        if isinstance(body, dict):
            return web.json_response(body, status=reply.status, headers=reply.headers)
        return web.Response(
            text=body, status=reply.status, headers=reply.headers, content_type="text/html"
        )


class Schedule:
    """The client's random source and sleep, recording what the client asked for.

    ``uniform`` returns ``fraction`` of the way up its range (1.0: the cap, 0.0:
    no wait), so a test pins the backoff it expects. ``sleep`` really sleeps,
    scaled by ``time_scale``, so the retry budget still runs on real time.
    """

    def __init__(self, fraction: float = 1.0, time_scale: float = 1.0) -> None:
        self.fraction = fraction
        self.time_scale = time_scale
        self.ranges: List[tuple] = []
        self.sleeps: List[float] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return a + (b - a) * self.fraction

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        await asyncio.sleep(delay * self.time_scale)


def settings_for(omnidesk: Any, **overrides: Any) -> OmnideskSettings:
    """Settings for a client of ``omnidesk`` (anything with a ``url``: the fake or the scripted one)."""
    credentials: Dict[str, Any] = {
        "api_url": omnidesk.url,
        "chat_config_url": omnidesk.url + "/chat",
        "chat_account_token": ACCOUNT_TOKEN,
        "chat_server_token": SERVER_TOKEN,
        "public_url": PUBLIC_URL,
        "hookpoint_secret": HOOKPOINT_SECRET,
        "connect_timeout": 1,
        "request_timeout": 2,
        "retry_budget": 10,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
    }
    credentials.update(overrides)
    return OmnideskSettings.from_credentials(credentials, env={})
