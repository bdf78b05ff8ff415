"""The customer chat page (web/) in headless Chromium, against a socket.io server on loopback.

The server speaks what the page relies on from Rasa's socket.io channel and
OmnideskInput (docs/channel.md): session_request/session_confirm, user_uttered,
bot_uttered (text, buttons, agent, attachment), agent_typing, customer_event and
POST /webhooks/omnidesk/upload. Like Rasa's, it does no CORS handling for
socket.io (cors_allowed_origins=[]), and the page is served from another origin,
so the test also proves the page reaches Rasa across origins.
"""

import asyncio
import pathlib
from typing import Any, AsyncIterator, Dict, List

import pytest
import pytest_asyncio
import socketio
from aiohttp import web

from tests.static_site import static_site

pytestmark = pytest.mark.browser

WEB = pathlib.Path(__file__).resolve().parents[2] / "web"


class ChannelStandIn:
    """Records what the page sends; answers as the channel would."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins=[])
        self.messages: List[Dict[str, Any]] = []
        self.customer_events: List[Dict[str, Any]] = []
        self.uploads: List[Dict[str, Any]] = []
        self.sid = ""

        async def session_request(sid: str, data: Any) -> None:
            self.sid = sid
            session_id = (data or {}).get("session_id") or "customer-session-1"
            await self.sio.enter_room(sid, session_id)
            await self.sio.emit("session_confirm", session_id, room=sid)

        async def user_uttered(sid: str, data: Dict[str, Any]) -> None:
            self.messages.append(data)
            if data.get("message") == "hi":
                await self.bot(
                    {
                        "text": "Want a person?",
                        "quick_replies": [
                            {
                                "content_type": "text",
                                "title": "Yes, a person please",
                                "payload": "/affirm",
                            },
                            {"content_type": "text", "title": "No", "payload": "/deny"},
                        ],
                    }
                )

        async def customer_event(sid: str, data: Dict[str, Any]) -> Dict[str, str]:
            self.customer_events.append(data)
            return {"status": "ok"}

        self.sio.on("session_request", session_request)
        self.sio.on("user_uttered", user_uttered)
        self.sio.on("customer_event", customer_event)

    async def bot(self, data: Dict[str, Any]) -> None:
        await self.sio.emit("bot_uttered", data, room=self.sid)

    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        assert isinstance(upload, web.FileField)
        self.uploads.append(
            {"sender": form["sender"], "filename": upload.filename, "data": upload.file.read()}
        )
        return web.json_response({"status": "ok"}, headers={"Access-Control-Allow-Origin": "*"})


async def serve(app: web.Application) -> "tuple[web.AppRunner, str]":
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, shutdown_timeout=1.0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest_asyncio.fixture
async def channel() -> AsyncIterator["tuple[ChannelStandIn, str]"]:
    stand_in = ChannelStandIn()
    app = web.Application()
    stand_in.sio.attach(app)
    app.router.add_post("/webhooks/omnidesk/upload", stand_in.upload)
    runner, url = await serve(app)
    yield stand_in, url
    await stand_in.sio.shutdown()  # stops engine.io's background service task
    await runner.cleanup()


@pytest_asyncio.fixture
async def page_url() -> AsyncIterator[str]:
    async with static_site(WEB) as url:
        yield url


@pytest.fixture
async def browser_page(browser: Any) -> Any:
    return await browser.new_page()


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def open_chat(page: Any, page_url: str, server: str) -> None:
    await page.goto(f"{page_url}/index.html?server={server}")
    await page.wait_for_function("document.body.dataset.sessionId", timeout=10_000)


async def test_the_customer_chats_with_the_bot_and_picks_a_button(
    channel: "tuple[ChannelStandIn, str]", page_url: str, browser_page: Any
) -> None:
    stand_in, server = channel
    page = browser_page
    await open_chat(page, page_url, server)

    await page.fill("[data-testid=message-input]", "hi")
    await page.click("[data-testid=send-button]")
    await page.wait_for_selector("[data-testid=bot-message] >> text=Want a person?", timeout=5_000)
    await page.click("[data-testid=quick-reply] >> text=Yes, a person please")

    await wait_for(lambda: len(stand_in.messages) == 2)
    assert [m["message"] for m in stand_in.messages] == ["hi", "/affirm"]
    assert {m["session_id"] for m in stand_in.messages} == {"customer-session-1"}
    assert stand_in.messages[0]["metadata"]["url"].startswith(page_url)
    customer_lines = await page.locator("[data-testid=customer-message]").all_inner_texts()
    assert customer_lines == ["hi", "Yes, a person please"]


async def test_the_agent_shows_with_name_picture_typing_and_files(
    channel: "tuple[ChannelStandIn, str]", page_url: str, browser_page: Any
) -> None:
    stand_in, server = channel
    page = browser_page
    await open_chat(page, page_url, server)

    await stand_in.sio.emit("agent_typing", {"typing": True}, room=stand_in.sid)
    await page.wait_for_selector("[data-testid=agent-typing]", state="visible", timeout=5_000)
    await stand_in.bot(
        {"text": "Hi, Sam here.", "agent": {"name": "Sam", "picture": f"{page_url}/pic.png"}}
    )
    await page.wait_for_selector("[data-testid=agent-message]", timeout=5_000)
    await stand_in.bot(
        {
            "attachment": {
                "type": "file",
                "payload": {"src": f"{page_url}/invoice.pdf", "name": "invoice.pdf"},
            },
            "agent": {"name": "Sam", "picture": None},
        }
    )
    await stand_in.bot(
        {"attachment": {"type": "image", "payload": {"src": f"{page_url}/photo.png"}}}
    )

    assert (
        await page.inner_text("[data-testid=agent-message] [data-testid=agent-name] >> nth=0")
        == "Sam"
    )
    assert await page.get_attribute("[data-testid=agent-picture]", "src") == f"{page_url}/pic.png"
    assert await page.is_hidden("[data-testid=agent-typing]")
    await page.wait_for_selector("[data-testid=message-file] >> text=invoice.pdf", timeout=5_000)
    await page.wait_for_selector("[data-testid=message-image]", timeout=5_000)


async def test_the_customer_types_and_sends_a_file(
    channel: "tuple[ChannelStandIn, str]", page_url: str, browser_page: Any
) -> None:
    stand_in, server = channel
    page = browser_page
    await open_chat(page, page_url, server)

    await page.type("[data-testid=message-input]", "where")
    await wait_for(lambda: stand_in.customer_events)
    assert stand_in.customer_events[0] == {
        "event": "startedtyping",
        "session_id": "customer-session-1",
    }
    await page.click("[data-testid=send-button]")
    await wait_for(lambda: any(e["event"] == "stoppedtyping" for e in stand_in.customer_events))

    await page.set_input_files(
        "[data-testid=file-input]",
        files=[{"name": "receipt.txt", "mimeType": "text/plain", "buffer": b"order 42"}],
    )
    await page.wait_for_selector("[data-testid=customer-file][data-state=sent]", timeout=5_000)
    assert stand_in.uploads == [
        {"sender": "customer-session-1", "filename": "receipt.txt", "data": b"order 42"}
    ]
