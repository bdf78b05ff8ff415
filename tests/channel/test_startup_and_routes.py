"""Start-up checks, the customer's upload and event routes, and Rasa's output lookup."""

from typing import Any

import pytest
from aiohttp import FormData
from rasa.server import _get_output_channel
from sanic.request import Request

from connectors.omnidesk.channel.input import ChannelConfigError, OmnideskInput
from tests.channel.conftest import ACCOUNT_TOKEN, SECRET, SERVER_TOKEN, callback_setup
from tests.channel.test_hookpoints import post

BASE = {
    "public_url": "http://127.0.0.1:5005",
    "hookpoint_secret": SECRET,
    "chat_account_token": ACCOUNT_TOKEN,
    "chat_server_token": SERVER_TOKEN,
}


def test_a_channel_that_answers_only_in_the_request_is_refused_naming_rest_as_a_way() -> None:
    # Hangouts answers inside the request, as rest does, and has no client that polls.
    with pytest.raises(ChannelConfigError) as raised:
        OmnideskInput.from_credentials({**BASE, "customer_channels": {"hangouts": None}})
    message = str(raised.value)
    assert message.startswith("customer_channels: hangouts (it answers only inside the request")
    assert "Use rest (its client polls or streams them)" in message and "socketio" in message


def test_rest_is_served_and_its_customer_pulls() -> None:
    channel = OmnideskInput.from_credentials({**BASE, "customer_channels": {"rest": None}})
    assert [c.name() for c in channel.customer_channels] == ["rest"]


def test_missing_or_unknown_customer_channels_fail_naming_the_key() -> None:
    with pytest.raises(ChannelConfigError, match="customer_channels: required"):
        OmnideskInput.from_credentials(dict(BASE))
    with pytest.raises(ChannelConfigError, match=r"customer_channels\.nosuchchannel"):
        OmnideskInput.from_credentials({**BASE, "customer_channels": {"nosuchchannel": {}}})


def test_bad_settings_fail_at_start_up_naming_the_setting() -> None:
    with pytest.raises(ChannelConfigError, match="hookpoint_secret"):
        OmnideskInput.from_credentials(
            {**BASE, "hookpoint_secret": "short", "customer_channels": {"socketio": {}}}
        )


async def test_customer_upload_reaches_the_agent_and_bad_uploads_are_refused() -> None:
    async with callback_setup(max_upload_bytes=2000) as setup:
        chat = await setup.hand_over("up-1")
        url = f"{setup.server.url}/webhooks/omnidesk/upload"

        token = setup.customer_token("up-1")

        def upload(sender: str, content: bytes, kind: str) -> FormData:
            data = FormData()
            data.add_field("sender", sender)
            data.add_field("token", token)
            data.add_field("file", content, filename="receipt.png", content_type=kind)
            return data

        assert (await post(url, data=upload("up-1", b"png-bytes", "image/png")))[0] == 200
        await setup.server.sandbox.wait_for(lambda: setup.server.sandbox.chat(chat).attachments)
        status, _, body = await post(url, data=upload("up-1", b"0" * 3000, "image/png"))
        assert status == 413 and "file" in body
        status, _, body = await post(url, data=upload("up-1", b"MZ", "application/x-msdownload"))
        assert status == 415 and "file" in body
        status, _, body = await post(url, data=upload("nobody", b"png", "image/png"))
        assert status == 404 and "sender" in body
        assert len(setup.server.sandbox.chat(chat).attachments) == 1


async def test_customer_events_reach_the_agent_and_bad_ones_are_refused() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("ev-1")
        url = f"{setup.server.url}/webhooks/omnidesk/event"
        token = setup.customer_token("ev-1")
        event = {"sender": "ev-1", "event": "startedtyping", "token": token}
        assert (await post(url, json=event))[0] == 200
        await setup.server.sandbox.wait_for(lambda: setup.server.sandbox.chat(chat).events)
        status, _, body = await post(url, json={**event, "event": "dancing"})
        assert status == 400 and "event" in body
        nobody = {"sender": "nobody", "event": "stoppedtyping", "token": token}
        assert (await post(url, json=nobody))[0] == 404
        assert (await post(url, json={"event": "stoppedtyping"}))[0] == 400
        assert len(setup.server.sandbox.chat(chat).events) == 1


async def test_rasa_finds_the_wrapped_channels_output_for_latest() -> None:
    async with callback_setup() as setup:
        await setup.say("out-1", "hello")
        make_request: Any = Request
        request = make_request(
            b"/x?output_channel=callback", {}, None, "POST", None, setup.server.app
        )

        class _Tracker:
            @staticmethod
            def get_latest_input_channel() -> str:
                return "callback"

        output = _get_output_channel(request, _Tracker())
        await output.send_text_message("out-1", "pushed by trigger_intent")
        await setup.customer.wait_for(
            lambda r: "pushed by trigger_intent" in [m.get("text") for m in r]
        )
