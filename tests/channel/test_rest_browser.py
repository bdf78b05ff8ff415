"""docs/channel.md's EventSource client in real headless Chromium: live, through a reload, to the end.

The page is served from an origin of its own, as a shop's page would be, and
talks to a channel server wrapping rest, with Rasa's own CORS set up. Its
script is the ``rest-chat.js`` block of docs/channel.md, read from the page,
never a copy. The agent (the sandbox) writes while the page listens, while it
reloads, and after; every agent message is shown once, in order; then the
chat ends and the bot answers the page again.
"""

import pathlib
import re
from typing import Any, AsyncIterator, List

import pytest
import pytest_asyncio

from tests.channel.conftest import channel_server
from tests.docs.support import DOCS
from tests.static_site import static_site

pytestmark = pytest.mark.browser

STEP_MS = 15_000

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>rest chat</title></head>
<body>
<ul id="log"></ul>
<input data-testid="message-input"><button data-testid="send-button">Send</button>
<script src="rest-chat.js"></script>
<script>
const params = new URLSearchParams(location.search);
const sender = sessionStorage.getItem("sender") || "web-" + Math.random().toString(16).slice(2);
sessionStorage.setItem("sender", sender);
document.body.dataset.sender = sender;
const log = document.getElementById("log");
// What the customer saw, across reloads: the test reads it.
const seen = JSON.parse(sessionStorage.getItem("seen") || "[]");
const chat = new RestChat(params.get("server"), sender, (kind, value) => {
  const item = document.createElement("li");
  item.dataset.kind = kind;
  item.textContent = kind === "bot" || kind === "agent" ? value.text : JSON.stringify(value);
  log.appendChild(item);
  seen.push([kind, item.textContent]);
  sessionStorage.setItem("seen", JSON.stringify(seen));
});
document.querySelector("[data-testid=send-button]").onclick = () => {
  const input = document.querySelector("[data-testid=message-input]");
  chat.say(input.value);
  input.value = "";
};
</script>
</body></html>
"""


def client_from_the_docs() -> str:
    text = (DOCS / "channel.md").read_text(encoding="utf-8")
    found = re.search(r"^```js\n(// rest-chat\.js:.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert found, "docs/channel.md has no ```js block starting // rest-chat.js"
    return found.group(1)


@pytest_asyncio.fixture
async def page_origin(tmp_path: pathlib.Path) -> AsyncIterator[str]:
    (tmp_path / "rest-chat.js").write_text(client_from_the_docs(), encoding="utf-8")
    (tmp_path / "index.html").write_text(PAGE, encoding="utf-8")
    async with static_site(tmp_path) as url:
        yield url


async def say(page: Any, text: str) -> None:
    await page.fill("[data-testid=message-input]", text)
    await page.click("[data-testid=send-button]")


async def seen_by_the_customer(page: Any, kind: str) -> List[str]:
    """What the page showed of ``kind``, in order, across its reloads."""
    seen: List[List[str]] = await page.evaluate("JSON.parse(sessionStorage.getItem('seen'))")
    return [text for shown_kind, text in seen if shown_kind == kind]


async def see(page: Any, kind: str, text: str) -> None:
    await page.locator(f"li[data-kind={kind}]", has_text=text).first.wait_for(timeout=STEP_MS)


async def test_the_documented_eventsource_client_shows_every_agent_message_once_across_a_reload(
    browser: Any, page_origin: str, tmp_path: pathlib.Path
) -> None:
    async with channel_server({"rest": None}, cors="*") as server:
        page = await browser.new_page()
        await page.goto(f"{page_origin}/index.html?server={server.url}")
        sender = await page.evaluate("document.body.dataset.sender")
        await say(page, "hi")
        await see(page, "bot", "bot: hi")

        started = await server.open_chat()
        server.escalate_on("I want a person", started)
        chat = started.chat_session_id
        await say(page, "I want a person")
        await see(page, "bot", "Connecting you to a person.")
        await server.wait_with_agent(sender)

        async def agent(text: str) -> None:
            assert (await server.sandbox.agent_reply(chat, text, name="Anna")).status == 200

        # Live: the agent writes, the page shows it without asking.
        await agent("Hello, I am Anna")
        await see(page, "agent", "Hello, I am Anna")
        await server.sandbox.agent_typing(chat, True)
        await see(page, "typing", "true")
        await agent("Let me look")
        await see(page, "agent", "Let me look")

        # The page reloads while the agent writes: on either side of it, shown once.
        await agent("One moment")
        await page.reload()
        await agent("Found it")
        await see(page, "agent", "Found it")
        assert await seen_by_the_customer(page, "agent") == [
            "Hello, I am Anna",
            "Let me look",
            "One moment",
            "Found it",
        ]
        await page.screenshot(path=str(tmp_path / "rest-with-agent.png"))

        # The customer writes to the agent from the page.
        await say(page, "Thank you")
        await server.sandbox.wait_for(
            lambda: "Thank you" in [m.text for m in server.sandbox.chat(chat).messages]
        )

        # The agent ends the chat: the bot's words, the end, and the bot answers again.
        await server.sandbox.agent_end(chat)
        await see(page, "bot", "Back with the bot (ended_by_agent).")
        await see(page, "ended", "ended_by_agent")
        await say(page, "hello again")
        await see(page, "bot", "bot: hello again")
        assert await seen_by_the_customer(page, "agent") == [
            "Hello, I am Anna",
            "Let me look",
            "One moment",
            "Found it",
        ]
        assert await seen_by_the_customer(page, "ended") == ['{"outcome":"ended_by_agent"}']
        # Nothing of the chat waits any more, and no stream is held.
        await server.relay.wait_idle(3)
        assert await server.channel.outbox.read(sender, None, chat) == []
        assert len(server.channel.routes.held) == 0
