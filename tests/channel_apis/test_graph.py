"""Rasa's own Messenger output (fbmessenger's MessengerClient) against the fake Send API."""

import hashlib
import hmac
from typing import List

import pytest

from tests.channel_apis import redirect
from tests.channel_apis.graph import (
    APP_SECRET,
    OUTSIDE_WINDOW,
    PAGE_ACCESS_TOKEN,
    USER_UNAVAILABLE,
    GraphApi,
    message_event,
    signed,
)

pytest.importorskip(
    "fbmessenger", reason="fbmessenger is not installed: Rasa's facebook channel needs it"
)

from fbmessenger import MessengerClient
from rasa.core.channels.channel import UserMessage
from rasa.core.channels.facebook import FacebookInput, Messenger, MessengerBot

PSID = "6543210987654321"


def messenger_bot(api: GraphApi) -> MessengerBot:
    client = MessengerClient(PAGE_ACCESS_TOKEN)
    redirect.point_messenger_client(client, api.url)
    return MessengerBot(client)


async def test_rasa_sends_text_in_parts_an_image_and_typing_to_the_customer(
    graph_api: GraphApi,
) -> None:
    bot = messenger_bot(graph_api)
    await bot.send_text_message(PSID, "Hello!\n\nHow can I help?")
    await bot.send_image_url(PSID, "https://files.example.com/map.png")
    await bot.send_action(PSID, "typing_on")

    text_1, text_2, image = graph_api.calls_to("message")
    assert [text_1.json["message"], text_2.json["message"]] == [
        {"text": "Hello!"},
        {"text": "How can I help?"},
    ]
    assert {call.json["messaging_type"] for call in (text_1, text_2, image)} == {"RESPONSE"}
    assert image.json["message"]["attachment"] == {
        "type": "image",
        "payload": {"url": "https://files.example.com/map.png"},
    }
    (typing,) = graph_api.calls_to("sender_action")
    assert (typing.recipient, typing.json["sender_action"]) == (PSID, "typing_on")
    assert all(call.query["access_token"] == PAGE_ACCESS_TOKEN for call in graph_api.calls)


def test_fbmessenger_sends_a_human_agent_tag_when_asked(graph_api: GraphApi) -> None:
    """Rasa's MessengerBot always says RESPONSE; the client itself can tag an agent's reply."""
    client = MessengerClient(PAGE_ACCESS_TOKEN)
    redirect.point_messenger_client(client, graph_api.url)

    answer = client.send({"text": "An agent is here"}, PSID, "MESSAGE_TAG", tag="HUMAN_AGENT")

    (call,) = graph_api.calls
    assert (call.json["messaging_type"], call.json["tag"]) == ("MESSAGE_TAG", "HUMAN_AGENT")
    assert answer["recipient_id"] == PSID
    assert answer["message_id"].startswith("m_")


async def test_rasa_returns_normally_although_graph_refused_outside_the_window(
    graph_api: GraphApi,
) -> None:
    """Rasa's MessengerBot ignores the Send API's answer and fbmessenger never raises."""
    graph_api.refuse(PSID, OUTSIDE_WINDOW)
    bot = messenger_bot(graph_api)

    assert await bot.send_text_message(PSID, "An agent is here") is None

    (call,) = graph_api.calls
    assert call.status == 400


def test_fbmessenger_returns_graphs_error_object_without_raising(graph_api: GraphApi) -> None:
    graph_api.refuse(PSID, USER_UNAVAILABLE)
    client = MessengerClient(PAGE_ACCESS_TOKEN)
    redirect.point_messenger_client(client, graph_api.url)

    answer = client.send({"text": "An agent is here"}, PSID, "RESPONSE")

    assert (answer["error"]["code"], answer["error"]["error_subcode"]) == (551, 1545041)


def test_a_wrong_page_token_gets_graphs_code_190(graph_api: GraphApi) -> None:
    client = MessengerClient("EAAWrongToken")
    redirect.point_messenger_client(client, graph_api.url)

    answer = client.send({"text": "Hi"}, PSID, "RESPONSE")

    assert answer["error"]["code"] == 190
    assert graph_api.calls[0].status == 400


async def test_get_output_channel_makes_no_call_and_sends_through_the_redirect(
    graph_api: GraphApi,
) -> None:
    channel = FacebookInput("verify-me", APP_SECRET, PAGE_ACCESS_TOKEN)
    with redirect.graph(graph_api.url):
        output = channel.get_output_channel()
    assert graph_api.calls == []

    await output.send_text_message(PSID, "An agent is here")

    (call,) = graph_api.calls
    assert (call.recipient, call.json["message"]) == (PSID, {"text": "An agent is here"})


def test_the_signed_webhook_is_what_rasa_accepts_and_a_changed_body_is_not() -> None:
    body, headers = signed(message_event(PSID, "I want a human"))

    assert FacebookInput.validate_hub_signature(APP_SECRET, body, headers["X-Hub-Signature"])
    assert not FacebookInput.validate_hub_signature(
        APP_SECRET, body.replace(b"human", b"robot"), headers["X-Hub-Signature"]
    )
    sha256 = hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == f"sha256={sha256}"


async def test_rasa_reads_the_webhook_event_and_answers_with_seen_and_typing(
    graph_api: GraphApi,
) -> None:
    turns: List[UserMessage] = []

    async def on_new_message(message: UserMessage) -> None:
        turns.append(message)

    with redirect.graph(graph_api.url):
        messenger = Messenger(PAGE_ACCESS_TOKEN, on_new_message)
    await messenger.handle(message_event(PSID, "I want a human"), None)

    (turn,) = turns
    assert (turn.sender_id, turn.text, turn.input_channel) == (PSID, "I want a human", "facebook")
    actions = [call.json["sender_action"] for call in graph_api.calls_to("sender_action")]
    assert actions == ["mark_seen", "typing_on", "typing_off"]
