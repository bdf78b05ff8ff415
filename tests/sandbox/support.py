"""Fixtures for the sandbox's tests: a running sandbox, a hookpoint receiver, an HTTP client."""

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

import aiohttp
import pytest
from aiohttp import web

from omnidesk_sandbox.testing import Sandbox, running_sandbox

ACCOUNT_TOKEN = "sandboxAccountToken1"
SERVER_TOKEN = "sandboxServerToken1"
SESSION_ID = "rasa-0123456789abcdef"


@dataclass
class ReceivedFile:
    filename: str
    content_type: str
    data: bytes


@dataclass
class Received:
    method: str
    path: str
    hookpoint: str
    content_type: str
    fields: Dict[str, str]
    files: Dict[str, ReceivedFile]


@dataclass
class Receiver:
    """A loopback stand-in for the bot's hookpoints: records every request Omnidesk would make."""

    chat_server: str = ""
    requests: List[Received] = field(default_factory=list)
    status: Dict[str, int] = field(default_factory=dict)  # hookpoint -> status to answer

    def of(self, hookpoint: str) -> List[Received]:
        return [r for r in self.requests if r.hookpoint == hookpoint]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    received = Receiver()

    async def hook(request: web.Request) -> web.Response:
        fields: Dict[str, str] = {}
        files: Dict[str, ReceivedFile] = {}
        form = await request.post()
        for name, value in form.items():
            if isinstance(value, web.FileField):
                files[name] = ReceivedFile(value.filename, value.content_type, value.file.read())
            else:
                fields[name] = str(value)
        name = request.match_info["hookpoint"]
        received.requests.append(
            Received(request.method, request.path, name, request.content_type, fields, files)
        )
        status = received.status.get(name, 200)
        return web.Response(text="ok" if status == 200 else "nope", status=status)

    app = web.Application()
    app.router.add_route("*", "/webhooks/omnidesk/hook/secret-0123456789abcdef/{hookpoint}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    received.chat_server = f"http://127.0.0.1:{port}/webhooks/omnidesk/hook/secret-0123456789abcdef"
    yield received
    await runner.cleanup()


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox(ACCOUNT_TOKEN, SERVER_TOKEN, hookpoint_timeout=3.0) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def message_form(
    chat_server: str = "http://127.0.0.1:9/hook", **overrides: Optional[str]
) -> Dict[str, str]:
    """A valid notifyUserNewChatMessage form; an override of None leaves the field out."""
    form: Dict[str, Optional[str]] = {
        "chatServer": chat_server,
        "chatSessionID": SESSION_ID,
        "chatAccountToken": ACCOUNT_TOKEN,
        "channelID": "8",
        "message": "I need a person",
        "messageNumber": "1",
    }
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


async def post(
    http: aiohttp.ClientSession, url: str, fields: Dict[str, str], encoding: str = "multipart"
) -> Tuple[int, Any]:
    if encoding == "multipart":
        writer = aiohttp.MultipartWriter("form-data")
        for name, value in fields.items():
            part = writer.append(value)
            part.set_content_disposition("form-data", name=name)
        body: object = writer
    else:
        body = fields
    async with http.post(url, data=body) as response:
        return response.status, await response.json(content_type=None)
