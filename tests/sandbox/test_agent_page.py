"""A person plays the agent in the page, in real headless Chromium, against a real bot receiver."""

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from omnidesk_sandbox.testing import Sandbox

from .support import SESSION_ID, Receiver, message_form, post

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
TIMEOUT_MS = 15_000


@pytest.mark.browser
@pytest.mark.timeout(90)
async def test_the_agent_sees_a_chat_live_and_answers_it_from_the_page(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver, tmp_path: Path, browser: Any
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await page.goto(sandbox.url + "/agent")
    await expect(page.get_by_test_id("stream-status")).to_have_text("live")

    # The bot pushes the chatbot log and opens the chat: it appears without a reload.
    await post(
        http,
        sandbox.url + "/api/v2/message/chatbot",
        {
            "from": "jane@example.com",
            "subject": "Chat with the support bot",
            "message": "## Conversation\n- **customer**: my order is late\n- **bot**: let me get a person <b>now</b>",
        },
    )
    status, _ = await post(
        http,
        sandbox.url + "/api/v2/chat/notifyUserNewChatMessage",
        message_form(
            receiver.chat_server,
            customerName="Jane Doe",
            emailAddress="jane@example.com",
            message="Where is my order 1234?",
        ),
    )
    assert status == 200
    item = page.locator(f'[data-testid="list-waiting"] [data-chat-id="{SESSION_ID}"]')
    await expect(item).to_contain_text("Jane Doe")
    await item.click()
    await expect(page.get_by_test_id("customer-message")).to_contain_text("order 1234")
    transcript = page.get_by_test_id("chat-transcript")
    await expect(transcript).to_contain_text("my order is late")
    await expect(transcript.locator("strong").first).to_have_text("customer")
    await expect(transcript).to_contain_text("<b>now</b>")  # shown as text, not markup

    # The agent sets the name and picture it replies with.
    await page.get_by_test_id("agent-name").fill("Anna")
    await page.get_by_test_id("agent-picture").fill("https://cdn.example.com/anna.png")
    await page.get_by_test_id("save-profile").click()
    await expect(page.get_by_test_id("profile-status")).to_have_text("saved")

    # Typing, then the reply.
    await page.get_by_test_id("reply-input").press_sequentially("Hi Jane")
    await sandbox.wait_for(lambda: receiver.of("typingIndicatorForCustomer"), timeout=15)
    await page.get_by_test_id("send-reply").click()
    await expect(page.get_by_test_id("last-hookpoint")).to_contain_text("answered 200")
    await sandbox.wait_for(lambda: receiver.of("messageForCustomer"), timeout=15)
    [reply] = receiver.of("messageForCustomer")
    assert reply.fields == {
        "picture": "https://cdn.example.com/anna.png",
        "name": "Anna",
        "message": "Hi Jane",
        "sessionID": SESSION_ID,
    }
    typing = [r.fields["Typing"] for r in receiver.of("typingIndicatorForCustomer")]
    assert typing[0] == "true" and typing[-1] == "false"
    assert all(
        r.fields["SessionID"] == SESSION_ID for r in receiver.of("typingIndicatorForCustomer")
    )
    await expect(
        page.locator(f'[data-testid="list-active"] [data-chat-id="{SESSION_ID}"]')
    ).to_be_visible()

    # The customer types and sends a file: both show up live.
    await post(
        http,
        sandbox.url + "/api/v2/chat/notifyUserNewChatEvent",
        {
            "chatServer": receiver.chat_server,
            "chatSessionID": SESSION_ID,
            "event": "startedtyping",
        },
    )
    await expect(page.get_by_test_id("customer-typing")).to_be_visible()

    # A file from the agent.
    upload = tmp_path / "label.txt"
    upload.write_bytes(b"return label")
    await page.get_by_test_id("file-input").set_input_files(str(upload))
    await page.get_by_test_id("send-file").click()
    await sandbox.wait_for(lambda: receiver.of("uploadForCustomer"), timeout=15)
    [sent] = receiver.of("uploadForCustomer")
    assert sent.files["file"].filename == "label.txt"
    assert sent.files["file"].data == b"return label"
    assert sent.fields == {"sessionID": SESSION_ID}

    # A failing hookpoint shows on the page.
    receiver.status["messageForCustomer"] = 500
    await page.get_by_test_id("reply-input").fill("Are you still there?")
    await page.get_by_test_id("send-reply").click()
    failed = page.get_by_test_id("last-hookpoint")
    await expect(failed).to_contain_text("answered 500")
    await expect(failed).to_have_attribute("data-ok", "false")
    await expect(page.locator('[data-testid="agent-action"][data-ok="false"]')).to_contain_text(
        "Are you still there?"
    )

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "sandbox-agent-page.png"))

    # The agent stops the chat.
    await page.get_by_test_id("end-chat").click()
    await sandbox.wait_for(lambda: receiver.of("endSession"), timeout=15)
    assert receiver.of("endSession")[0].fields == {"sessionID": SESSION_ID}
    await expect(
        page.locator(f'[data-testid="list-ended"] [data-chat-id="{SESSION_ID}"]')
    ).to_be_visible()
    await expect(page.get_by_test_id("send-reply")).to_be_disabled()
    assert sandbox.chat(SESSION_ID).ended_by == "agent"

    # Availability from the page's switch.
    await page.get_by_test_id("agents-online-toggle").uncheck()
    await sandbox.wait_for(lambda: not sandbox.state.agents_online, timeout=15)
