"""Customers on Telegram, Messenger, Slack, WhatsApp and SMS (Twilio) and Teams, with an agent.

The channel on a real Sanic server (Rasa 3.6's Sanic 21, Rasa Pro's Sanic 25) wraps
Rasa's own channel; that channel's client library talks to a local fake of the
service's API (tests/channel_apis, pointed there by ``redirect``: the connector and
Rasa run unpatched); the sandbox is Omnidesk; a scripted stand-in answers for the
bot. Each customer writes as the service posts to the bot's webhook, and reads
only what reached their own conversation.
"""

import contextlib
import struct
import zlib
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Tuple

import aiohttp
import pytest
from rasa.core.channels.channel import InputChannel, OutputChannel

from connectors.omnidesk.channel.input import OmnideskInput
from connectors.omnidesk.channel.startup import ChannelConfigError, push_refusal
from omnidesk_sandbox.testing import Sandbox
from tests.channel.conftest import (
    ACCOUNT_TOKEN,
    SECRET,
    SERVER_TOKEN,
    ChannelServer,
    channel_server,
)
from tests.channel_apis import botframework, graph, redirect, slack, telegram, twilio
from tests.channel_apis.customers import (
    FIXED_SLACK_CHANNEL,
    WEBHOOK_URL,
    FakeCustomer,
    MessengerCustomer,
    SlackCustomer,
    TeamsCustomer,
    TelegramCustomer,
    TwilioCustomer,
)
from tests.channel_apis.fake_api import FakeApi

# Which client library each channel needs (rasa-pro installs them with its channels extra).
LIBRARIES = {
    "telegram": "aiogram",
    "facebook": "fbmessenger",
    "slack": "slack_sdk",
    "whatsapp": "twilio",
    "sms": "twilio",
    "botframework": "jwt",
}
KINDS = list(LIBRARIES)
SHOW_TYPING = {"telegram", "facebook", "botframework"}

AGENT_SAYS = "Hello, I'm Anna. How can I help?"
NOT_DELIVERED = "[Not delivered to the customer: your last message."


def png(seed: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixel = zlib.compress(b"\x00" + bytes([seed % 256, 80, 160]))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixel) + chunk(b"IEND", b"")
    )


def fake_for(
    kind: str,
) -> Tuple[FakeApi, Callable[[str], "contextlib.AbstractContextManager[None]"]]:
    if kind == "telegram":
        return telegram.TelegramApi(), redirect.telegram
    if kind == "facebook":
        return graph.GraphApi(), redirect.graph
    if kind == "slack":
        return slack.SlackApi(), redirect.slack
    if kind in ("whatsapp", "sms"):
        return twilio.TwilioApi(), redirect.twilio
    return botframework.BotFrameworkApi(), redirect.botframework


def customer_for(kind: str, api: Any) -> FakeCustomer:
    if kind == "telegram":
        return TelegramCustomer(api)
    if kind == "facebook":
        return MessengerCustomer(api)
    if kind == "slack":
        return SlackCustomer(api)
    if kind in ("whatsapp", "sms"):
        return TwilioCustomer(api, whatsapp=kind == "whatsapp")
    return TeamsCustomer(api)


@contextlib.contextmanager
def started(api: FakeApi) -> Iterator[FakeApi]:
    api.start()
    try:
        yield api
    finally:
        api.stop()


@contextlib.asynccontextmanager
async def on_fake(kind: str, **settings: Any) -> AsyncIterator[Tuple[FakeCustomer, ChannelServer]]:
    """The channel wrapping ``kind``'s Rasa channel, its client library on the fake."""
    pytest.importorskip(LIBRARIES[kind], reason=f"{LIBRARIES[kind]} is not installed")
    api, redirected = fake_for(kind)
    with started(api), redirected(api.url):
        customer = customer_for(kind, api)
        channels = {customer.credentials_key: customer.credentials()}
        async with channel_server(channels, **settings) as server:
            yield customer, server


async def hand_over(
    customer: FakeCustomer, server: ChannelServer, http: aiohttp.ClientSession
) -> str:
    """The customer talks to the bot, then asks for a person: the chat opens; its id."""
    await customer.say(http, server.url, "hi")
    await customer.wait_for_text("bot: hi")
    opened = await server.open_chat()
    server.escalate_on("I want a person", opened)
    await customer.say(http, server.url, "I want a person")
    await customer.wait_for_text("Connecting you to a person.")
    await server.wait_with_agent(customer.conversation_id)
    return opened.chat_session_id


async def chat_texts(sandbox: Sandbox, chat: str, count: int) -> List[str]:
    messages = await sandbox.wait_for(
        lambda: len(sandbox.chat(chat).messages) >= count and sandbox.chat(chat).messages,
        timeout=10,
    )
    return [message.text for message in messages]


@pytest.mark.parametrize("kind", KINDS)
async def test_the_customer_reaches_an_agent_in_their_own_conversation_and_comes_back(
    kind: str,
) -> None:
    async with on_fake(kind) as (customer, server), aiohttp.ClientSession() as http:
        chat = await hand_over(customer, server, http)
        sandbox = server.sandbox

        # The agent's reply, with the agent's name.
        answer = await sandbox.agent_reply(chat, AGENT_SAYS, name="Anna")
        assert (answer.status, answer.body) == (200, "ok")
        await customer.wait_for_text(f"Anna: {AGENT_SAYS}")

        # The agent's picture, and the agent typing where the channel shows it.
        answer = await sandbox.agent_upload(chat, "label.png", png(1), "image/png")
        assert answer.status == 200, answer
        await customer.wait_for(
            "the agent's picture", lambda c: customer.shows_image(c, "label.png")
        )
        assert (await sandbox.agent_typing(chat, True)).status == 200
        if kind in SHOW_TYPING:
            await customer.wait_for("the agent typing", customer.shows_typing)

        # The customer's turns reach the agent, numbered, in order; the bot hears none.
        turns = ["My order 1234 has not arrived", "It was due on Monday"]
        for number, turn in enumerate(turns, start=2):
            await customer.say(http, server.url, turn)
            assert (await chat_texts(sandbox, chat, number))[number - 1] == turn
        assert [m.number for m in sandbox.chat(chat).messages] == [1, 2, 3]
        assert [m.text for m in server.bot.seen] == ["hi", "I want a person"]

        # The agent ends the chat: the bot's words, then the bot answers again.
        assert (await sandbox.agent_end(chat)).status == 200
        await customer.wait_for_text("Back with the bot (ended_by_agent).")
        before = len(customer.texts())
        await customer.say(http, server.url, "hi again")
        await customer.wait_for_text("bot: hi again", after=before)

        # Nothing went to any other conversation (for Slack: never to slack_channel).
        assert customer.elsewhere() == []


@pytest.mark.parametrize("kind", KINDS)
async def test_a_reply_the_channel_refuses_for_good_is_told_to_the_agent_once(kind: str) -> None:
    async with on_fake(kind) as (customer, server), aiohttp.ClientSession() as http:
        chat = await hand_over(customer, server, http)
        customer.refuse()
        answer = await server.sandbox.agent_reply(chat, "Are you still there?", name="Anna")
        assert (answer.status, answer.body) == (200, "ok")

        texts = await chat_texts(server.sandbox, chat, 2)
        assert texts[1].startswith(NOT_DELIVERED), texts
        await server.relay.wait_idle(2.0)
        # Tried once: a refusal for good is not retried (Slack refuses with HTTP 200, so
        # the calls are counted by what they carried).
        tried = [
            call
            for call in customer.api.calls
            if "Are you still there?" in str(call.json or "") + str(dict(call.form))
        ]
        assert len(tried) == 1, [call.describe() for call in customer.api.calls]
        assert len(server.sandbox.chat(chat).messages) == 2

        # The customer is back on the channel: the agent's next words reach them.
        customer.accept()
        await server.sandbox.agent_reply(chat, "There you are", name="Anna")
        await customer.wait_for_text("Anna: There you are")


def refusal_reasons() -> Dict[str, str]:
    return {
        "telegram": "Telegram: Forbidden: bot was blocked by the user",
        "facebook": "(#10) This message is sent outside of allowed window.",
        "slack": "Slack: is_archived",
        "whatsapp": "Twilio error 63016: outside WhatsApp's 24-hour window",
        "sms": "Twilio error 21610: the customer unsubscribed",
        "botframework": "Bot Framework 403 BotNotInConversationRoster",
    }


@pytest.mark.parametrize("kind", ["telegram", "slack", "whatsapp", "botframework", "facebook"])
async def test_the_agent_reads_what_the_channel_said(kind: str) -> None:
    async with on_fake(kind) as (customer, server), aiohttp.ClientSession() as http:
        chat = await hand_over(customer, server, http)
        customer.refuse()
        await server.sandbox.agent_reply(chat, "Hello?", name="Anna")
        texts = await chat_texts(server.sandbox, chat, 2)
        assert refusal_reasons()[kind] in texts[1], texts[1]


async def test_a_whatsapp_reply_twilio_fails_later_is_told_to_the_agent() -> None:
    async with on_fake("whatsapp") as (customer, server), aiohttp.ClientSession() as http:
        assert isinstance(customer, TwilioCustomer)
        chat = await hand_over(customer, server, http)
        await server.sandbox.agent_reply(chat, "Your parcel left today", name="Anna")
        await customer.wait_for_text("Your parcel left today")
        sid = customer.sid_of_text("Your parcel left today")
        api: Any = customer.api

        # Twilio took it (201), then reports it undelivered: 63016, the 24-hour window.
        assert await api.report_status(sid, "undelivered", error_code=63016) == 204
        texts = await chat_texts(server.sandbox, chat, 2)
        assert texts[1].startswith(NOT_DELIVERED) and "63016" in texts[1], texts

        # A delivered one says nothing; a callback not signed by Twilio is refused.
        assert await api.report_status(sid, "delivered") == 204
        forged = api._status_callbacks[sid]
        status = await twilio.send_status_callback(
            forged,
            sid,
            "undelivered",
            customer.conversation_id,
            customer.business_number,
            error_code=63016,
            auth_token="not-the-auth-token",
        )
        assert status == 403
        await server.relay.wait_idle(1.0)
        assert len(server.sandbox.chat(chat).messages) == 2


async def test_messenger_agent_replies_carry_the_human_agent_tag_and_the_bot_s_do_not() -> None:
    async with on_fake("facebook") as (customer, server), aiohttp.ClientSession() as http:
        chat = await hand_over(customer, server, http)
        await server.sandbox.agent_reply(chat, "Hi from a person", name="Anna")
        await customer.wait_for_text("Anna: Hi from a person")
        await server.sandbox.agent_end(chat)
        await customer.wait_for_text("Back with the bot")

        by_text = {customer.text_of(c): c for c in customer.calls() if customer.text_of(c)}
        agent = by_text["Anna: Hi from a person"]
        assert (agent.json["messaging_type"], MessengerCustomer.tag_of(agent)) == (
            "MESSAGE_TAG",
            "HUMAN_AGENT",
        )
        bot = by_text["Back with the bot (ended_by_agent)."]
        assert (bot.json["messaging_type"], MessengerCustomer.tag_of(bot)) == ("RESPONSE", None)


async def test_messenger_replies_go_untagged_when_the_page_has_no_human_agent_permission() -> None:
    async with on_fake("facebook", messenger_human_agent_tag=False) as (customer, server):
        async with aiohttp.ClientSession() as http:
            chat = await hand_over(customer, server, http)
            await server.sandbox.agent_reply(chat, "Hi from a person", name="Anna")
            await customer.wait_for_text("Anna: Hi from a person")
        agent = next(c for c in customer.calls() if customer.text_of(c) == "Anna: Hi from a person")
        assert (agent.json["messaging_type"], MessengerCustomer.tag_of(agent)) == ("RESPONSE", None)


async def test_slack_replies_follow_each_customer_to_their_own_thread() -> None:
    async with on_fake("slack") as (first, server), aiohttp.ClientSession() as http:
        second = SlackCustomer(first.api)  # type: ignore[arg-type]
        chats = [await hand_over(customer, server, http) for customer in (first, second)]
        for customer, chat in zip((first, second), chats):
            await server.sandbox.agent_reply(
                chat, f"Only for {customer.conversation_id}", name="Anna"
            )
        for customer in (first, second):
            await customer.wait_for_text(f"Only for {customer.conversation_id}")
            assert all(
                customer.conversation_id in text for text in customer.texts() if "Only" in text
            )
        posted_to = {call.recipient for call in first.api.calls_to("chat.postMessage")}
        assert FIXED_SLACK_CHANNEL not in posted_to


async def test_a_teams_reply_with_a_token_the_connector_no_longer_takes_gets_a_new_one() -> None:
    async with on_fake("botframework") as (customer, server), aiohttp.ClientSession() as http:
        chat = await hand_over(customer, server, http)
        api: Any = customer.api
        api.tokens.clear()  # every token handed out so far is refused (401) from now on
        await server.sandbox.agent_reply(chat, "Still here", name="Anna")
        await customer.wait_for_text("Anna: Still here")
        assert len(server.sandbox.chat(chat).messages) == 1


# -- start-up: what can push, decided without a call ------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_start_up_check_asks_nothing_of_the_service(kind: str) -> None:
    pytest.importorskip(LIBRARIES[kind], reason=f"{LIBRARIES[kind]} is not installed")
    api, redirected = fake_for(kind)
    with started(api), redirected(api.url):
        customer = customer_for(kind, api)
        channel = OmnideskInput.from_credentials(
            {
                "customer_channels": {customer.credentials_key: customer.credentials()},
                "public_url": "http://127.0.0.1:5005",
                "hookpoint_secret": SECRET,
                "chat_account_token": ACCOUNT_TOKEN,
                "chat_server_token": SERVER_TOKEN,
            }
        )
        made = len(api.calls)  # Rasa's BotFrameworkInput fetches its keys when it is made
        assert push_refusal(channel.customer_channels[0]) is None
        assert len(api.calls) == made


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("hangouts", "answers only inside the request"),
        ("cmdline", "rasa shell"),
        ("twilio_voice", "voice channel"),
    ],
)
def test_a_channel_that_cannot_reach_a_customer_later_is_refused_with_the_reason(
    name: str, reason: str
) -> None:
    with pytest.raises(ChannelConfigError) as refused:
        OmnideskInput.from_credentials(
            {
                "customer_channels": {name: None},
                "public_url": "http://127.0.0.1:5005",
                "hookpoint_secret": SECRET,
                "chat_account_token": ACCOUNT_TOKEN,
                "chat_server_token": SERVER_TOKEN,
            }
        )
    assert name in str(refused.value) and reason in str(refused.value)


# -- a channel of your own that answers per conversation ---------------------------------

PER_CONVERSATION: Dict[str, List[Tuple[str, str]]] = {"sent": []}


class _PerConversationOutput(OutputChannel):  # type: ignore[misc]
    def __init__(self, conversation_id: str) -> None:
        super().__init__()
        self._conversation_id = conversation_id

    @classmethod
    def name(cls) -> str:
        return "per_conversation"

    async def send_text_message(self, recipient_id: str, text: str, **kwargs: Any) -> None:
        PER_CONVERSATION["sent"].append((self._conversation_id, text))


class PerConversationInput(InputChannel):  # type: ignore[misc]
    """A channel that gives an output only per conversation, as Rasa Pro 3.19 lets it."""

    @classmethod
    def name(cls) -> str:
        return "per_conversation"

    def get_output_channel_for_conversation(self, conversation_id: str) -> OutputChannel:
        return _PerConversationOutput(conversation_id)

    def blueprint(self, on_new_message: Any) -> Any:
        from sanic import Blueprint

        return Blueprint("per_conversation_webhook")


async def test_a_channel_that_answers_per_conversation_gets_the_agent_s_reply_that_way() -> None:
    PER_CONVERSATION["sent"] = []
    async with channel_server({f"{__name__}.PerConversationInput": None}) as server:
        opened = await server.open_chat()
        assert await server.relay.start("conv-7", "per_conversation", opened)
        await server.sandbox.agent_reply(opened.chat_session_id, "Hello", name="Anna")
        await server.relay.wait_idle(2.0)
    assert PER_CONVERSATION["sent"] == [("conv-7", "Anna: Hello")]


async def test_telegram_s_output_channel_works_inside_the_serving_loop_on_either_rasa() -> None:
    """Rasa 3.6's own get_output_channel() runs asyncio.run(set_webhook): inside a loop it
    raises, at start-up it leaves aiogram's session on a dead loop (every update 500)."""
    async with on_fake("telegram") as (customer, server), aiohttp.ClientSession() as http:
        wrapped = server.channel.customer_channels[0]
        output = wrapped.get_output_channel()
        await output.send_text_message(customer.conversation_id, "pushed from inside the loop")
        await customer.say(http, server.url, "hi")
        await customer.wait_for_text("bot: hi")
        assert "pushed from inside the loop" in customer.texts()
        set_webhook = customer.api.calls_to("setWebhook")
        if any(k.__module__.startswith("aiogram.") for k in type(output).__mro__):
            # Rasa 3.6 sets the webhook at start-up, as it did; once, in the serving loop.
            assert [call.param("url") for call in set_webhook] == [WEBHOOK_URL]
        else:
            assert set_webhook == []  # Rasa Pro sets it only when asked
