"""Rasa's own Bot Framework channel (requests and PyJWT) against the fake keys, tokens and connector."""

import logging
from typing import Any, Dict, Iterator

import pytest
from rasa.core.channels.botframework import BotFramework, BotFrameworkInput

from tests.channel_apis import redirect
from tests.channel_apis.botframework import (
    APP_ID,
    APP_PASSWORD,
    NOT_IN_ROSTER,
    BotFrameworkApi,
)

CONVERSATION = "a:1FakeTeamsConversation"
USER = "29:1FakeTeamsUser"


@pytest.fixture
def redirected(botframework_api: BotFrameworkApi) -> Iterator[BotFrameworkApi]:
    with redirect.botframework(botframework_api.url):
        yield botframework_api


def reply_channel(activity: Dict[str, Any], password: str = APP_PASSWORD) -> BotFramework:
    """The output channel Rasa builds from a customer's activity."""
    return BotFramework(
        APP_ID, password, activity["conversation"], activity["recipient"], activity["serviceUrl"]
    )


def test_the_input_channel_fetches_the_keys_when_it_is_made(redirected: BotFrameworkApi) -> None:
    BotFrameworkInput(APP_ID, APP_PASSWORD)

    assert [call.api_method for call in redirected.calls] == ["openid", "keys"]


def test_a_signed_activity_passes_rasas_check_and_a_foreign_audience_does_not(
    redirected: BotFrameworkApi,
) -> None:
    channel = BotFrameworkInput(APP_ID, APP_PASSWORD)
    _, headers = redirected.inbound_activity("I want a human")

    assert channel._validate_auth(headers["Authorization"]) is None
    foreign = f"Bearer {redirected.connector_token(audience='another-bot')}"
    refused = channel._validate_auth(foreign)
    assert refused is not None
    assert refused.status == 401


async def test_rasa_gets_a_token_once_and_posts_text_and_an_image_to_the_conversation(
    redirected: BotFrameworkApi,
) -> None:
    activity, _ = redirected.inbound_activity("I want a human", CONVERSATION, USER)
    output = reply_channel(activity)

    await output.send_text_message(USER, "Hello!\n\nHow can I help?")
    await output.send_image_url(USER, "https://files.example.com/map.png")

    assert [call.api_method for call in redirected.calls] == ["token"] + ["activities"] * 3
    token = redirected.calls[0]
    assert token.form["grant_type"] == "client_credentials"
    text_1, text_2, image = redirected.calls_to("activities")
    assert {call.recipient for call in (text_1, text_2, image)} == {CONVERSATION}
    assert [text_1.json["text"], text_2.json["text"]] == ["Hello!", "How can I help?"]
    assert text_1.json["recipient"] == {"id": USER}
    assert image.json["attachments"][0]["content"]["images"] == [
        {"url": "https://files.example.com/map.png"}
    ]
    assert {call.status for call in redirected.calls} == {200}


async def test_rasa_only_logs_when_the_connector_refuses(
    redirected: BotFrameworkApi, caplog: pytest.LogCaptureFixture
) -> None:
    """Rasa's BotFramework output logs the refusal and returns normally."""
    redirected.refuse(CONVERSATION, NOT_IN_ROSTER)
    activity, _ = redirected.inbound_activity("I want a human", CONVERSATION, USER)

    with caplog.at_level(logging.ERROR, logger="rasa.core.channels.botframework"):
        assert await reply_channel(activity).send_text_message(USER, "An agent is here") is None

    assert redirected.calls_to("activities")[0].status == 403
    assert "Error trying to send botframework" in caplog.text


async def test_with_a_wrong_password_rasa_posts_without_a_token_and_only_logs(
    redirected: BotFrameworkApi, caplog: pytest.LogCaptureFixture
) -> None:
    activity, _ = redirected.inbound_activity("I want a human", CONVERSATION, USER)

    with caplog.at_level(logging.ERROR, logger="rasa.core.channels.botframework"):
        await reply_channel(activity, "wrong").send_text_message(USER, "An agent is here")

    token, post = redirected.calls
    assert (token.status, post.status) == (401, 401)
    assert "Authorization" not in post.headers
    assert "Could not get BotFramework token" in caplog.text


def test_the_input_channel_has_no_output_channel_of_its_own(redirected: BotFrameworkApi) -> None:
    """RasaHQ/rasa#11593: replies need the conversation reference of a customer's turn."""
    channel = BotFrameworkInput(APP_ID, APP_PASSWORD)

    assert channel.get_output_channel() is None
    for_conversation = getattr(channel, "get_output_channel_for_conversation", None)
    if for_conversation is not None:  # Rasa Pro 3.19+
        assert for_conversation(CONVERSATION) is None
