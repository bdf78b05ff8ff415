"""The customer page and the agent page in one headless Chromium, talking through the bot.

The customer page (web/) is served from its own origin, as scripts/run.sh
serves it, and pointed at the stack's Rasa with ?server=; the agent page is the
sandbox's. Screenshots of both are kept in artifacts/e2e/.
"""

import pathlib
from typing import Any, AsyncIterator, Tuple

import pytest
import pytest_asyncio

from tests.e2e.people import Desk, RasaApi
from tests.e2e.stack import Stack
from tests.e2e.test_journey import ASK_EMAIL, CLOSED_BY_AGENT, CONNECTED, GREETING
from tests.static_site import static_site

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

WEB = pathlib.Path(__file__).resolve().parents[2] / "web"
STEP_MS = 20_000


@pytest_asyncio.fixture
async def page_server() -> AsyncIterator[str]:
    """web/ as static files on its own loopback origin, like `python -m http.server`."""
    async with static_site(WEB) as url:
        yield url


@pytest.fixture
async def two_pages(browser: Any) -> Tuple[Any, Any]:
    customer = await browser.new_page(viewport={"width": 480, "height": 760})
    agent = await browser.new_page(viewport={"width": 1280, "height": 800})
    return customer, agent


async def customer_says(page: Any, text: str) -> None:
    await page.fill("[data-testid=message-input]", text)
    await page.click("[data-testid=send-button]")


async def bot_says(page: Any, fragment: str, nth: int = 0) -> None:
    locator = page.locator("[data-testid=bot-message]", has_text=fragment).nth(nth)
    await locator.wait_for(timeout=STEP_MS)


async def test_customer_and_agent_pages_talk_through_the_bot(
    stack: Stack,
    page_server: str,
    two_pages: Tuple[Any, Any],
    desk: Desk,
    rasa: RasaApi,
    artifacts: pathlib.Path,
) -> None:
    customer, agent = two_pages
    try:
        # The agent opens the desk and says who they are.
        await agent.goto(f"{stack.sandbox_url}/agent")
        await agent.fill("[data-testid=agent-name]", "Anna")
        await agent.click("[data-testid=save-profile]")
        await agent.wait_for_selector("[data-testid=profile-status] >> text=saved")

        # The customer asks for a person and gives an email address.
        await customer.goto(f"{page_server}/index.html?server={stack.rasa_url}")
        await customer.wait_for_function("document.body.dataset.sessionId", timeout=STEP_MS)
        session_id = await customer.evaluate("document.body.dataset.sessionId")
        await customer_says(customer, "hi")
        await bot_says(customer, GREETING)
        await customer_says(customer, "I want to talk to a person")
        await bot_says(customer, ASK_EMAIL)
        await customer_says(customer, f"browser.{session_id[-8:]}@example.com")
        await bot_says(customer, CONNECTED)
        chat_id = (await rasa.tracker(session_id))["slots"]["omnidesk_chat_session_id"]
        assert chat_id

        # The chat appears on the desk; the agent replies in the page.
        chat_item = agent.locator(f"[data-testid=chat-item][data-chat-id='{chat_id}']")
        await chat_item.wait_for(timeout=STEP_MS)
        await chat_item.click()
        await agent.fill("[data-testid=reply-input]", "Hi, Anna here. What can I do for you?")
        await agent.click("[data-testid=send-reply]")

        # The customer sees it, with the agent's name.
        reply = customer.locator("[data-testid=agent-message]", has_text="Anna here")
        await reply.wait_for(timeout=STEP_MS)
        assert await reply.locator("[data-testid=agent-name]").inner_text() == "Anna"
        await customer_says(customer, "Where is my parcel?")
        await agent.locator(
            "[data-testid=customer-message]", has_text="Where is my parcel?"
        ).wait_for(timeout=STEP_MS)
        await customer.screenshot(path=str(artifacts / "browser-customer-with-agent.png"))
        await agent.screenshot(path=str(artifacts / "browser-agent-desk.png"))

        # The agent stops the chat; the customer is told, and the bot answers again.
        await agent.click("[data-testid=end-chat]")
        await bot_says(customer, CLOSED_BY_AGENT)
        await customer_says(customer, "hello")
        await bot_says(customer, GREETING, nth=1)
        await customer.screenshot(path=str(artifacts / "browser-customer-back-with-bot.png"))
    finally:
        await desk.set_agent_profile("Sandbox Agent")
