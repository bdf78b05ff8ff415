"""Rasa's own Slack output (slack_sdk's AsyncWebClient) against the fake Web API."""

import json
from typing import Any, Dict, Tuple

import pytest
from multidict import CIMultiDict

from tests.channel_apis import redirect
from tests.channel_apis.slack import (
    BOT_TOKEN,
    BOT_USER_ID,
    CHANNEL_NOT_FOUND,
    SIGNING_SECRET,
    SlackApi,
    dm_event,
    mention_event,
    ratelimited,
    signed,
)

pytest.importorskip("slack_sdk", reason="slack_sdk is not installed: Rasa's slack channel needs it")

from rasa.core.channels.slack import SlackBot, SlackInput
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

CUSTOMER = "U0CUSTOMER"
DM = "D0FAKEDM1"
CHANNEL = "C0SUPPORT"
THREAD = "1700000000.000100"


def slack_bot(api: SlackApi, channel: Any = None, thread_id: Any = None) -> SlackBot:
    bot = SlackBot(BOT_TOKEN, channel, thread_id)
    redirect.point_slack_client(bot.client, api.url)
    return bot


class SignedRequest:
    """What Rasa's SlackInput reads of a Sanic request: headers, body, json."""

    def __init__(self, signed_request: Tuple[bytes, Dict[str, str]]) -> None:
        self.body, headers = signed_request
        self.headers = CIMultiDict(headers)
        self.json = json.loads(self.body)


async def test_rasa_sends_text_in_parts_and_an_image_to_the_dm(slack_api: SlackApi) -> None:
    bot = slack_bot(slack_api)
    await bot.send_text_message(DM, "Hello!\n\nHow can I help?")
    await bot.send_image_url(DM, "https://files.example.com/map.png")

    text_1, text_2, image = slack_api.calls_to("chat.postMessage")
    assert [text_1.json["text"], text_2.json["text"]] == ["Hello!", "How can I help?"]
    assert {call.recipient for call in (text_1, text_2, image)} == {DM}
    assert image.json["blocks"] == [
        {
            "type": "image",
            "image_url": "https://files.example.com/map.png",
            "alt_text": "https://files.example.com/map.png",
        }
    ]
    assert text_1.headers["Authorization"] == f"Bearer {BOT_TOKEN}"


async def test_rasa_answers_in_the_thread_it_was_given(slack_api: SlackApi) -> None:
    bot = slack_bot(slack_api, CHANNEL, THREAD)
    await bot.send_text_message(CUSTOMER, "An agent is here")

    (call,) = slack_api.calls
    assert (call.recipient, call.json["thread_ts"]) == (CHANNEL, THREAD)


async def test_with_slack_channel_set_rasa_posts_there_whoever_the_recipient_is(
    slack_api: SlackApi,
) -> None:
    channel = SlackInput(BOT_TOKEN, slack_channel=CHANNEL, slack_signing_secret=SIGNING_SECRET)
    with redirect.slack(slack_api.url):
        output = channel.get_output_channel()
    assert slack_api.calls == []

    await output.send_text_message(CUSTOMER, "Meant for one customer")

    (call,) = slack_api.calls
    assert call.recipient == CHANNEL


async def test_a_push_to_a_thread_conversation_id_is_refused_as_no_such_channel(
    slack_api: SlackApi,
) -> None:
    """With conversation_granularity thread the conversation id is user_channel_thread:
    get_output_channel() sends to it as if it were a channel, and Slack finds none."""
    channel = SlackInput(
        BOT_TOKEN, slack_signing_secret=SIGNING_SECRET, conversation_granularity="thread"
    )
    request = SignedRequest(signed(mention_event(CUSTOMER, "hi", CHANNEL, thread_ts=THREAD)))
    metadata = channel.get_metadata(request)
    conversation_id = channel._get_conversation_id(CUSTOMER, metadata["out_channel"], THREAD)
    assert conversation_id == f"{CUSTOMER}_{CHANNEL}_{THREAD}"
    with redirect.slack(slack_api.url):
        output = channel.get_output_channel()

    with pytest.raises(SlackApiError, match="channel_not_found"):
        await output.send_text_message(conversation_id, "An agent is here")


async def test_rasa_raises_slacks_refusal(slack_api: SlackApi) -> None:
    """Rasa's SlackBot lets slack_sdk's SlackApiError through, for HTTP 200 refusals too."""
    slack_api.refuse(DM, CHANNEL_NOT_FOUND)
    bot = slack_bot(slack_api)

    with pytest.raises(SlackApiError) as raised:
        await bot.send_text_message(DM, "An agent is here")

    assert raised.value.response["error"] == "channel_not_found"
    assert raised.value.response.status_code == 200


async def test_rasa_raises_the_rate_limit_with_retry_after(slack_api: SlackApi) -> None:
    slack_api.fail_next(ratelimited(retry_after=30))
    bot = slack_bot(slack_api)

    with pytest.raises(SlackApiError) as raised:
        await bot.send_text_message(DM, "An agent is here")

    assert raised.value.response.status_code == 429
    assert raised.value.response.headers["Retry-After"] == "30"
    assert len(slack_api.calls) == 1


async def test_a_file_upload_goes_through_the_three_steps(slack_api: SlackApi) -> None:
    client = AsyncWebClient(BOT_TOKEN)
    redirect.point_slack_client(client, slack_api.url)

    await client.files_upload_v2(
        channel=DM, content=b"%PDF-1.4 invoice", filename="invoice.pdf", title="Invoice"
    )

    steps = [call.api_method for call in slack_api.calls]
    assert steps == ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"]
    assert slack_api.calls[1].body == b"%PDF-1.4 invoice"
    assert slack_api.calls[2].recipient == DM


def test_a_signed_dm_is_authentic_to_rasa_and_names_the_dm() -> None:
    channel = SlackInput(BOT_TOKEN, slack_signing_secret=SIGNING_SECRET)
    request = SignedRequest(signed(dm_event(CUSTOMER, "I want a human", channel=DM)))

    assert channel.is_request_from_slack_authentic(request)
    metadata = channel.get_metadata(request)
    assert (metadata["out_channel"], metadata["users"]) == (DM, [BOT_USER_ID])


def test_a_signed_mention_in_a_thread_gives_rasa_the_channel_and_thread() -> None:
    channel = SlackInput(BOT_TOKEN, slack_signing_secret=SIGNING_SECRET, use_threads=True)
    event = mention_event(CUSTOMER, "I want a human", CHANNEL, thread_ts=THREAD)
    request = SignedRequest(signed(event))

    assert channel.is_request_from_slack_authentic(request)
    metadata = channel.get_metadata(request)
    assert (metadata["out_channel"], metadata["thread_id"]) == (CHANNEL, THREAD)


def test_rasa_refuses_a_wrong_secret_and_an_old_timestamp() -> None:
    channel = SlackInput(BOT_TOKEN, slack_signing_secret=SIGNING_SECRET)
    event = dm_event(CUSTOMER, "hi")

    assert not channel.is_request_from_slack_authentic(SignedRequest(signed(event, "other")))
    stale = SignedRequest(signed(event, timestamp=1_000_000_000))
    assert not channel.is_request_from_slack_authentic(stale)
