"""The whole journey on Telegram, Messenger, Slack, WhatsApp, SMS and Teams, on a real ``rasa run``.

One Rasa 3.6 (``rasa run``, the example bot, ``rasa run actions``, the sandbox as
Omnidesk) wraps all six under the Omnidesk channel: telegram, facebook, slack,
twilio on the WhatsApp number, twilio again as ``twilio_sms`` on the SMS number
(tests/channel_apis/sms.py), botframework. Rasa runs through
``tests.channel_apis.on_fakes``, so each channel's client library talks to its
local fake; neither Rasa nor the connector is patched. Each test is one
customer with ids of their own, so the six share the stack.

The customer greets the bot, asks for a person and gives an email address; the
chat opens with the transcript; the agent's reply, picture and typing reach the
customer's own conversation; the customer's turns reach the agent in order; a
reply the channel refuses for good is told to the agent; the agent ends the
chat and the bot answers again.
"""

import sys
import uuid
from typing import Any, AsyncIterator, Dict, Iterator

import aiohttp
import pytest
import pytest_asyncio

from tests.channel_apis import botframework, graph, slack, telegram, twilio
from tests.channel_apis.customers import (
    FIXED_SLACK_CHANNEL,
    FakeCustomer,
    MessengerCustomer,
    SlackCustomer,
    TeamsCustomer,
    TelegramCustomer,
    TwilioCustomer,
)
from tests.channel_apis.fake_api import FakeApi
from tests.e2e.conftest import FAST_FAILURE_ENV
from tests.e2e.people import Desk, RasaApi, apoll, ready_desk
from tests.e2e.stack import ROOT, Stack
from tests.e2e.test_journey import (
    ASK_EMAIL,
    ASKED_FOR_PERSON,
    CLOSED_BY_AGENT,
    CONNECTED,
    CONNECTING,
    GREETING,
    chat_session_of,
    png,
)

pytestmark = pytest.mark.e2e

NOT_DELIVERED = "[Not delivered to the customer: your last message."
SHOW_TYPING = {"telegram", "facebook", "botframework"}
ON_FAKES = [sys.executable, "-m", "tests.channel_apis.on_fakes", "rasa"]


@pytest.fixture(scope="module")
def fakes() -> Iterator[Dict[str, FakeApi]]:
    apis: Dict[str, FakeApi] = {
        "telegram": telegram.TelegramApi(),
        "graph": graph.GraphApi(),
        "slack": slack.SlackApi(),
        "twilio": twilio.TwilioApi(),
        "botframework": botframework.BotFrameworkApi(),
    }
    started = []
    try:
        for api in apis.values():
            started.append(api.start())
        yield apis
    finally:
        for api in started:
            api.stop()


@pytest.fixture(scope="module")
def channel_stack(fakes: Dict[str, FakeApi]) -> Iterator[Stack]:
    customers = {
        "telegram": TelegramCustomer(fakes["telegram"]),  # type: ignore[arg-type]
        "facebook": MessengerCustomer(fakes["graph"]),  # type: ignore[arg-type]
        "slack": SlackCustomer(fakes["slack"]),  # type: ignore[arg-type]
        "whatsapp": TwilioCustomer(fakes["twilio"], whatsapp=True),  # type: ignore[arg-type]
        "sms": TwilioCustomer(fakes["twilio"], whatsapp=False),  # type: ignore[arg-type]
        "botframework": TeamsCustomer(fakes["botframework"]),  # type: ignore[arg-type]
    }
    credentials = {
        "connectors.omnidesk.OmnideskInput": {
            "customer_channels": {c.credentials_key: c.credentials() for c in customers.values()}
        }
    }
    env = {
        **FAST_FAILURE_ENV,
        # A refused reply is retried quickly, so the tests see the retry or its absence.
        "OMNIDESK_OUTBOX_BACKOFF_BASE": "0.1",
        "OMNIDESK_OUTBOX_BACKOFF_MAX": "0.5",
        "CHANNEL_API_TELEGRAM": fakes["telegram"].url,
        "CHANNEL_API_GRAPH": fakes["graph"].url,
        "CHANNEL_API_SLACK": fakes["slack"].url,
        "CHANNEL_API_TWILIO": fakes["twilio"].url,
        "CHANNEL_API_BOTFRAMEWORK": fakes["botframework"].url,
    }
    started = Stack.start(
        log_dir=ROOT / "artifacts" / "e2e" / "channels",
        callback_url="http://127.0.0.1:9/unused",
        env=env,
        credentials_override=credentials,
        rasa_launcher=ON_FAKES,
        timeout=180,
    )
    try:
        yield started
    finally:
        started.stop()


@pytest_asyncio.fixture
async def channel_desk(channel_stack: Stack, http: aiohttp.ClientSession) -> AsyncIterator[Desk]:
    channel_stack.check_alive()
    async with ready_desk(channel_stack.sandbox_url, http) as desk:
        yield desk


def new_customer(kind: str, fakes: Dict[str, FakeApi]) -> FakeCustomer:
    if kind == "telegram":
        return TelegramCustomer(fakes["telegram"])  # type: ignore[arg-type]
    if kind == "facebook":
        return MessengerCustomer(fakes["graph"])  # type: ignore[arg-type]
    if kind == "slack":
        return SlackCustomer(fakes["slack"])  # type: ignore[arg-type]
    if kind in ("whatsapp", "sms"):
        return TwilioCustomer(fakes["twilio"], whatsapp=kind == "whatsapp")  # type: ignore[arg-type]
    return TeamsCustomer(fakes["botframework"])  # type: ignore[arg-type]


async def desk_texts(desk: Desk, chat_id: str, count: int) -> Any:
    async def arrived() -> Any:
        messages = (await desk.chat(chat_id))["messages"]
        return len(messages) >= count and messages

    return await apoll(arrived, f"{count} messages in chat {chat_id}")


@pytest.mark.parametrize(
    "kind", ["telegram", "facebook", "slack", "whatsapp", "sms", "botframework"]
)
async def test_a_customer_on_the_channel_is_handed_to_an_agent_and_back(
    kind: str,
    fakes: Dict[str, FakeApi],
    channel_stack: Stack,
    channel_desk: Desk,
    http: aiohttp.ClientSession,
) -> None:
    customer = new_customer(kind, fakes)
    desk, url = channel_desk, channel_stack.rasa_url
    rasa = RasaApi(url, http)
    email = f"{kind}.{uuid.uuid4().hex[:8]}@example.com"

    # The bot answers on the channel, then hands over.
    await customer.say(http, url, "hi")
    await customer.wait_for_text(GREETING)
    await customer.say(http, url, "I want to talk to a person")
    await customer.wait_for_text(ASK_EMAIL)
    await customer.say(http, url, email)
    await customer.wait_for_text(CONNECTING)
    await customer.wait_for_text(CONNECTED)
    chat_id = await chat_session_of(rasa, customer.conversation_id)
    assert not any("omnidesk_handoff" in text for text in customer.texts())

    # The chat opened with the transcript in the chatbot log.
    (ticket,) = [t for t in await desk.tickets() if t["from"] == email]
    assert ticket["subject"] == ASKED_FOR_PERSON
    assert "talk to a person" in ticket["message"]
    opened = await desk.chat(chat_id)
    assert [m["number"] for m in opened["messages"]] == [1]
    assert f"ticket #{ticket['ticket_id']}" in opened["messages"][0]["text"]

    # The agent's reply, picture and typing reach the customer's own conversation.
    answer = await desk.reply(chat_id, "Hello, I'm Anna. How can I help?", name="Anna")
    assert answer["hookpoint_status"] == 200, answer
    await customer.wait_for_text("Anna: Hello, I'm Anna. How can I help?")
    picture = png(3)
    sent = await desk.upload(chat_id, "label.png", picture, "image/png")
    assert sent["hookpoint_status"] == 200, sent
    shown = await customer.wait_for(
        "the agent's picture", lambda call: customer.shows_image(call, "label.png")
    )
    async with http.get(str(customer.image_url_of(shown))) as download:
        assert (download.status, await download.read()) == (200, picture)
    assert (await desk.typing(chat_id, True))["hookpoint_status"] == 200
    if kind in SHOW_TYPING:
        await customer.wait_for("the agent typing", customer.shows_typing)

    # The customer's turns reach the agent, numbered, in the order typed.
    turns = ["My order 1234 has not arrived", "It was due last Monday", "Can you check?"]
    for number, turn in enumerate(turns, start=2):
        await customer.say(http, url, turn)
        await desk_texts(desk, chat_id, number)
    messages = (await desk.chat(chat_id))["messages"]
    assert [(m["number"], m["text"]) for m in messages[1:]] == [
        (2, turns[0]),
        (3, turns[1]),
        (4, turns[2]),
    ]

    # A reply the channel refuses for good: the agent reads it in the chat.
    customer.refuse()
    await desk.reply(chat_id, "Are you still there?", name="Anna")
    noted = await desk_texts(desk, chat_id, 5)
    assert noted[4]["text"].startswith(NOT_DELIVERED), noted[4]
    assert noted[4]["number"] is None
    customer.accept()

    # The agent ends the chat: the bot says it is back, and answers again.
    before = len(customer.texts())
    assert (await desk.end(chat_id))["hookpoint_status"] == 200
    await customer.wait_for_text(CLOSED_BY_AGENT, after=before)
    after = len(customer.texts())
    await customer.say(http, url, "hello")
    await customer.wait_for_text(GREETING, after=after)

    if kind == "slack":
        sent_to = {call.recipient for call in customer.api.calls_to("chat.postMessage")}
        assert FIXED_SLACK_CHANNEL not in sent_to


async def test_a_whatsapp_reply_twilio_reports_undelivered_later_reaches_the_agent(
    fakes: Dict[str, FakeApi],
    channel_stack: Stack,
    channel_desk: Desk,
    http: aiohttp.ClientSession,
) -> None:
    customer = TwilioCustomer(fakes["twilio"], whatsapp=True)  # type: ignore[arg-type]
    url = channel_stack.rasa_url
    rasa = RasaApi(url, http)
    await customer.say(http, url, "I want to talk to a person")
    await customer.wait_for_text(ASK_EMAIL)
    await customer.say(http, url, f"later.{uuid.uuid4().hex[:8]}@example.com")
    await customer.wait_for_text(CONNECTED)
    chat_id = await chat_session_of(rasa, customer.conversation_id)

    await channel_desk.reply(chat_id, "Your parcel left today", name="Anna")
    await customer.wait_for_text("Your parcel left today")
    sid = customer.sid_of_text("Your parcel left today")
    api: Any = customer.api
    assert await api.report_status(sid, "undelivered", error_code=63016) == 204
    noted = await desk_texts(channel_desk, chat_id, 2)
    assert noted[1]["text"].startswith(NOT_DELIVERED) and "63016" in noted[1]["text"], noted
