"""Rasa's own Twilio output (the blocking twilio Client) against the fake Messages API."""

import logging
from typing import AsyncIterator, Dict, List, Tuple

import pytest
import pytest_asyncio
from aiohttp import web

from tests.channel_apis import redirect
from tests.channel_apis.twilio import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    OUTSIDE_WINDOW,
    SMS_NUMBER,
    WHATSAPP_NUMBER,
    TwilioApi,
    inbound_message,
    invalid_to,
    signature,
)

pytest.importorskip("twilio", reason="twilio is not installed: Rasa's twilio channel needs it")

from rasa.core.channels.twilio import TwilioInput, TwilioOutput
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator

CUSTOMER = "+15557654321"
WHATSAPP_CUSTOMER = "whatsapp:+15557654321"


def twilio_output(api: TwilioApi, number: str = SMS_NUMBER) -> TwilioOutput:
    output = TwilioOutput(ACCOUNT_SID, AUTH_TOKEN, number)
    redirect.point_twilio_client(output, api.url)
    return output


async def test_rasa_sends_sms_in_parts_and_an_image(twilio_api: TwilioApi) -> None:
    output = twilio_output(twilio_api)
    await output.send_text_message(CUSTOMER, "Hello!\n\nHow can I help?")
    await output.send_image_url(CUSTOMER, "https://files.example.com/map.png")

    text_1, text_2, image = twilio_api.calls_to("Messages.create")
    assert [dict(call.form) for call in (text_1, text_2)] == [
        {"To": CUSTOMER, "From": SMS_NUMBER, "Body": "Hello!"},
        {"To": CUSTOMER, "From": SMS_NUMBER, "Body": "How can I help?"},
    ]
    assert image.form.getall("MediaUrl") == ["https://files.example.com/map.png"]
    assert {call.status for call in twilio_api.calls} == {201}


async def test_rasa_sends_whatsapp_from_the_whatsapp_number(twilio_api: TwilioApi) -> None:
    output = twilio_output(twilio_api, WHATSAPP_NUMBER)
    await output.send_text_message(WHATSAPP_CUSTOMER, "An agent is here")

    (call,) = twilio_api.calls
    assert (call.form["To"], call.form["From"]) == (WHATSAPP_CUSTOMER, WHATSAPP_NUMBER)
    (message,) = twilio_api.messages.values()
    assert message["status"] == "queued"


async def test_rasa_only_logs_when_twilio_refuses_outside_the_whatsapp_window(
    twilio_api: TwilioApi, caplog: pytest.LogCaptureFixture
) -> None:
    """Rasa's TwilioOutput catches TwilioRestException, logs it and returns normally."""
    twilio_api.refuse(WHATSAPP_CUSTOMER, OUTSIDE_WINDOW)
    output = twilio_output(twilio_api, WHATSAPP_NUMBER)

    with caplog.at_level(logging.ERROR, logger="rasa.core.channels.twilio"):
        assert await output.send_text_message(WHATSAPP_CUSTOMER, "An agent is here") is None

    assert [call.status for call in twilio_api.calls] == [400]
    assert "Something went wrong" in caplog.text
    assert twilio_api.messages == {}


def test_the_client_itself_raises_twilios_error_with_its_code(twilio_api: TwilioApi) -> None:
    twilio_api.refuse(CUSTOMER, invalid_to(CUSTOMER))
    output = twilio_output(twilio_api)

    with pytest.raises(TwilioRestException) as raised:
        output.messages.create(to=CUSTOMER, from_=SMS_NUMBER, body="Hi")

    assert (raised.value.status, raised.value.code) == (400, 21211)


async def test_the_clients_async_create_sends_off_the_loop_and_raises_refusals(
    twilio_api: TwilioApi,
) -> None:
    """twilio's own aiohttp client: a way to send without blocking the serving loop."""
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.rest import Client

    http = AsyncTwilioHttpClient()
    client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=http)
    redirect.point_twilio_client(client, twilio_api.url)
    twilio_api.refuse(WHATSAPP_CUSTOMER, OUTSIDE_WINDOW)
    try:
        message = await client.messages.create_async(to=CUSTOMER, from_=SMS_NUMBER, body="Hi")
        with pytest.raises(TwilioRestException) as raised:
            await client.messages.create_async(
                to=WHATSAPP_CUSTOMER, from_=WHATSAPP_NUMBER, body="An agent is here"
            )
    finally:
        await http.close()

    assert message.status == "queued"
    assert (raised.value.status, raised.value.code) == (400, 63016)


def test_a_wrong_auth_token_is_refused(twilio_api: TwilioApi) -> None:
    output = TwilioOutput(ACCOUNT_SID, "wrong-token", SMS_NUMBER)
    redirect.point_twilio_client(output, twilio_api.url)

    with pytest.raises(TwilioRestException) as raised:
        output.messages.create(to=CUSTOMER, from_=SMS_NUMBER, body="Hi")

    assert (raised.value.status, raised.value.code) == (401, 20003)


async def test_get_output_channel_makes_no_call_and_sends_through_the_redirect(
    twilio_api: TwilioApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_EDGE", "sydney")  # would send to api.sydney.us1.twilio.com
    channel = TwilioInput(ACCOUNT_SID, AUTH_TOKEN, SMS_NUMBER)
    with redirect.twilio(twilio_api.url):
        output = channel.get_output_channel()
        assert twilio_api.calls == []
        await output.send_text_message(CUSTOMER, "An agent is here")

    (call,) = twilio_api.calls
    assert (call.recipient, call.form["Body"]) == (CUSTOMER, "An agent is here")


Received = List[Tuple[str, Dict[str, str]]]


@pytest_asyncio.fixture
async def status_receiver() -> AsyncIterator[Tuple[str, Received]]:
    """A status callback route that keeps what arrives with a signature twilio's own
    RequestValidator accepts."""
    received: Received = []
    validator = RequestValidator(AUTH_TOKEN)

    async def status(request: web.Request) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        url = f"http://{request.host}{request.path_qs}"
        if not validator.validate(url, form, request.headers.get("X-Twilio-Signature", "")):
            return web.Response(status=403)
        received.append((url, form))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/twilio/status", status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/twilio/status", received
    await runner.cleanup()


async def test_a_message_accepted_then_undelivered_is_reported_to_its_status_callback(
    twilio_api: TwilioApi, status_receiver: Tuple[str, Received]
) -> None:
    callback_url, received = status_receiver
    output = twilio_output(twilio_api, WHATSAPP_NUMBER)
    message = output.messages.create(
        to=WHATSAPP_CUSTOMER, from_=WHATSAPP_NUMBER, body="Hi", status_callback=callback_url
    )
    assert message.status == "queued"

    answered = await twilio_api.report_status(message.sid, "undelivered", error_code=63016)

    assert answered == 204
    ((url, form),) = received
    assert url == callback_url
    assert (form["MessageSid"], form["MessageStatus"], form["ErrorCode"]) == (
        message.sid,
        "undelivered",
        "63016",
    )
    assert form["To"] == WHATSAPP_CUSTOMER


def test_the_inbound_webhook_form_is_signed_as_twilio_signs_it() -> None:
    url = "https://bot.example.com/webhooks/twilio/webhook"
    form = inbound_message(WHATSAPP_CUSTOMER, "I want a human", to=WHATSAPP_NUMBER)

    assert RequestValidator(AUTH_TOKEN).validate(url, form, signature(url, form))
    assert (form["From"], form["Body"], form["WaId"]) == (
        WHATSAPP_CUSTOMER,
        "I want a human",
        "15557654321",
    )
