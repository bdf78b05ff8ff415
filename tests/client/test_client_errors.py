"""What a failed call raises, and what is refused before anything is sent.

Omnidesk is scripted behind a MockTransport: no socket.
"""

import dataclasses
import logging

import pytest

from connectors.omnidesk.client import (
    OmnideskClient,
    OmnideskError,
    OmnideskHTTPError,
    OmnideskResponseError,
    OmnideskUnavailable,
    OmnideskValidationError,
)
from connectors.omnidesk.settings import Secret
from connectors.omnidesk.transport import MockTransport, Request, TransportError
from tests.client.fake_omnidesk import (
    ACCOUNT_TOKEN,
    API_KEY,
    HOOKPOINT_SECRET,
    SERVER_TOKEN,
    SESSION_ID,
    Reply,
    settings_for,
)

NEW_MESSAGE = "/api/v2/chat/notifyUserNewChatMessage"
SECRETS = (ACCOUNT_TOKEN, SERVER_TOKEN, HOOKPOINT_SECRET, API_KEY)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


async def send_message(client: OmnideskClient) -> None:
    await client.notify_user_new_chat_message(chat_session_id=SESSION_ID, message="Hello")


async def test_an_error_body_with_400_carries_omnidesks_message(scripted, make_scripted_client):
    scripted.script(
        NEW_MESSAGE,
        Reply(status=400, body={"status": "error", "message": "chatSessionID is invalid"}),
    )

    with pytest.raises(OmnideskHTTPError) as caught:
        await send_message(make_scripted_client())

    error = caught.value
    assert error.call == "notifyUserNewChatMessage"
    assert error.status == 400
    assert error.omnidesk_message == "chatSessionID is invalid"
    assert error.retryable is False
    assert str(error) == (
        "Omnidesk notifyUserNewChatMessage failed: HTTP 400: chatSessionID is invalid"
    )


async def test_an_error_body_with_200_is_a_failure(scripted, make_scripted_client):
    scripted.script(NEW_MESSAGE, Reply(status=200, body={"status": "error", "message": "no"}))

    with pytest.raises(OmnideskHTTPError) as caught:
        await send_message(make_scripted_client())

    assert caught.value.status == 200
    assert caught.value.omnidesk_message == "no"
    assert "error body" in str(caught.value)


@pytest.mark.parametrize("body", ["<html>Bad gateway</html>", "", "[1, 2]", '"Message sent."'])
async def test_a_success_status_with_an_unreadable_body_is_a_response_error(
    scripted, make_scripted_client, body
):
    scripted.script(NEW_MESSAGE, Reply(status=200, body=body))

    with pytest.raises(OmnideskResponseError) as caught:
        await send_message(make_scripted_client())

    assert caught.value.status == 200
    assert caught.value.retryable is False
    assert "not a JSON object" in str(caught.value)


async def test_a_client_error_with_a_html_body_has_no_omnidesk_message(
    scripted, make_scripted_client
):
    scripted.script(NEW_MESSAGE, Reply(status=404, body="<h1>Not found</h1>"))

    with pytest.raises(OmnideskHTTPError) as caught:
        await send_message(make_scripted_client())

    assert caught.value.status == 404
    assert caught.value.omnidesk_message is None
    assert str(caught.value) == "Omnidesk notifyUserNewChatMessage failed: HTTP 404"


async def test_a_redirect_is_a_refusal_not_retried(scripted, make_scripted_client):
    scripted.script(NEW_MESSAGE, Reply(status=302, headers={"Location": "/elsewhere"}, body=""))

    with pytest.raises(OmnideskHTTPError) as caught:
        await send_message(make_scripted_client())

    assert caught.value.status == 302
    assert [request.path for request in scripted.requests] == [NEW_MESSAGE]


async def test_every_error_class_shares_the_base(scripted, make_scripted_client):
    assert issubclass(OmnideskValidationError, OmnideskError)
    assert issubclass(OmnideskValidationError, ValueError)
    for error_class in (OmnideskHTTPError, OmnideskUnavailable, OmnideskResponseError):
        assert issubclass(error_class, OmnideskError)


async def test_an_omnidesk_message_that_echoes_a_token_is_masked(scripted, make_scripted_client):
    scripted.script(
        NEW_MESSAGE,
        Reply(status=403, body={"status": "error", "message": f"token {ACCOUNT_TOKEN} unknown"}),
    )

    with pytest.raises(OmnideskHTTPError) as caught:
        await send_message(make_scripted_client())

    assert caught.value.omnidesk_message == "token *** unknown"
    assert_no_secret(str(caught.value))


async def test_no_error_or_log_line_holds_a_token_or_a_message_body(
    scripted, make_scripted_client, caplog
):
    caplog.set_level(logging.DEBUG)
    scripted.script(
        NEW_MESSAGE,
        Reply(status=503, body={"status": "error", "message": f"down for {ACCOUNT_TOKEN}"}),
        Reply(drop=True),
        Reply(status=400, body={"status": "error", "message": "bad"}),
    )
    scripted.script("/chat/requestChatConfig", Reply(status=500), Reply(status=500))
    client = make_scripted_client(api_key=API_KEY, max_attempts=2)
    errors = []

    for attempt in (
        client.notify_user_new_chat_message(
            chat_session_id=SESSION_ID, message="my password is hunter2"
        ),
        client.request_chat_config(),
    ):
        with pytest.raises(OmnideskError) as caught:
            await attempt
        errors.append(caught.value)

    for error in errors:
        assert_no_secret(str(error))
        assert_no_secret(repr(error))
        assert "hunter2" not in str(error)
    for record in caplog.records:
        assert_no_secret(record.getMessage())
        assert "hunter2" not in record.getMessage()
    assert_no_secret(repr(client.settings))


async def test_a_validation_error_names_the_call_field_and_rule(scripted, make_scripted_client):
    with pytest.raises(OmnideskValidationError) as caught:
        await make_scripted_client().notify_user_new_chat_message(
            chat_session_id="rasa_1234567890", message="Hi"
        )

    error = caught.value
    assert error.call == "notifyUserNewChatMessage"
    assert error.field == "chatSessionID"
    assert "letters, digits and '-'" in error.rule
    assert str(error).startswith(
        "Omnidesk notifyUserNewChatMessage failed: not sent: chatSessionID"
    )
    assert isinstance(error, ValueError)
    assert error.retryable is False


MESSAGE_CASES = [
    ("chatSessionID", {"chat_session_id": "short"}),
    ("chatSessionID", {"chat_session_id": "x" * 66}),
    ("chatSessionID", {"chat_session_id": "user@example.com:1"}),
    ("message", {"message": ""}),
    ("messageNumber", {"message_number": 0}),
    ("messageNumber", {"message_number": 51}),
    ("messageNumber", {"message_number": "2"}),
    ("messageNumber", {"message_number": True}),
    ("url", {"url": "https://example.com/a page"}),
    ("emailAddress", {"email_address": "jane.example.com"}),
    ("phoneNumber", {"phone_number": "0612345678"}),
    ("phoneNumber", {"phone_number": "+31 6 1234"}),
]


@pytest.mark.parametrize(("field", "change"), MESSAGE_CASES)
async def test_a_customer_message_that_breaks_a_rule_is_not_sent(
    scripted, make_scripted_client, field, change
):
    arguments = {"chat_session_id": SESSION_ID, "message": "Hi", **change}

    with pytest.raises(OmnideskValidationError) as caught:
        await make_scripted_client().notify_user_new_chat_message(**arguments)

    assert caught.value.field == field
    assert scripted.requests == []


ATTACHMENT_CASES = [
    ("sessionID", {"chat_session_id": "bad_id_with_underscores"}),
    ("file", {"content": b""}),
    ("file", {"content": b"x" * 1025}),
    ("file", {"content_type": "png"}),
    ("file", {"content_type": "image/*"}),
]


@pytest.mark.parametrize(("field", "change"), ATTACHMENT_CASES)
async def test_an_attachment_that_breaks_a_rule_is_not_sent(
    scripted, make_scripted_client, field, change
):
    arguments = {
        "chat_session_id": SESSION_ID,
        "filename": "a.png",
        "content": b"png",
        "content_type": "image/png",
        **change,
    }

    with pytest.raises(OmnideskValidationError) as caught:
        await make_scripted_client(max_upload_bytes=1024).add_attachment(**arguments)

    assert caught.value.field == field
    assert scripted.requests == []


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("chatSessionID", {"chat_session_id": "no"}),
        ("event", {"event": "typing"}),
        ("event", {"event": "StartedTyping"}),
        ("event", {"event": ["startedtyping"]}),
    ],
)
async def test_an_event_that_breaks_a_rule_is_not_sent(
    scripted, make_scripted_client, field, change
):
    arguments = {"chat_session_id": SESSION_ID, "event": "startedtyping", **change}

    with pytest.raises(OmnideskValidationError) as caught:
        await make_scripted_client().notify_user_new_chat_event(**arguments)

    assert caught.value.field == field
    assert scripted.requests == []


async def test_ending_a_chat_with_a_bad_session_id_is_not_sent(scripted, make_scripted_client):
    with pytest.raises(OmnideskValidationError) as caught:
        await make_scripted_client().notify_user_end_chat(chat_session_id="conversation_42")

    assert caught.value.field == "chatSessionID"
    assert scripted.requests == []


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("message", {"message": ""}),
        ("subject", {"subject": ""}),
        ("subject", {"subject": "two\nlines"}),
        ("from", {"from_address": "not an address"}),
        ("brandID", {"brand_id": ""}),
    ],
)
async def test_a_chatbot_log_that_breaks_a_rule_is_not_sent(
    scripted, make_scripted_client, field, change
):
    arguments = {"message": "history", "subject": "Chat", **change}

    with pytest.raises(OmnideskValidationError) as caught:
        await make_scripted_client().create_chatbot_log(**arguments)

    assert caught.value.field == field
    assert scripted.requests == []


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("chatAccountToken", {"chat_account_token": Secret("short")}),
        ("chatAccountToken", {"chat_account_token": Secret("has-a-dash-0123")}),
        ("chatServerToken", {"chat_server_token": Secret("with space 0123")}),
        ("chatServer", {"public_url": "https://bot.example.com/?x="}),
    ],
)
async def test_a_client_with_unusable_settings_is_refused_at_once(
    scripted, make_scripted_client, field, change
):
    settings = dataclasses.replace(make_scripted_client().settings, **change)

    with pytest.raises(OmnideskValidationError) as caught:
        OmnideskClient(settings)

    assert caught.value.field == field
    assert "short" not in str(caught.value)
    assert "has-a-dash" not in str(caught.value)
    assert scripted.requests == []


async def test_an_attachment_s_content_type_parameters_are_dropped_not_refused(
    scripted, make_scripted_client
):
    await make_scripted_client().add_attachment(
        chat_session_id=SESSION_ID,
        filename="notes.txt",
        content=b"hello",
        content_type="text/plain; charset=utf-8",
    )

    (request,) = scripted.requests
    file_part = b'Content-Type: text/plain\r\nContent-Disposition: form-data; name="file"'
    assert file_part in request.body


@pytest.mark.parametrize(
    ("change", "status"),
    [({"content": b"x" * 1025}, 413), ({"content_type": "png"}, 415), ({"content": b""}, 400)],
)
async def test_an_attachment_refusal_carries_the_status_that_fits(
    scripted, make_scripted_client, change, status
):
    arguments = {
        "chat_session_id": SESSION_ID,
        "filename": "a.png",
        "content": b"png",
        "content_type": "image/png",
        **change,
    }

    with pytest.raises(OmnideskValidationError) as caught:
        await make_scripted_client(max_upload_bytes=1024).add_attachment(**arguments)

    assert caught.value.status == status
    assert str(caught.value).startswith("Omnidesk addAttachment failed: not sent: file: ")
    assert scripted.requests == []


async def test_an_api_key_is_masked_in_an_error_that_quotes_the_url(scripted):
    api_key = "Ap+i/Key=x&y%z"

    def unreachable(request: Request):
        raise TransportError(f"ClientOSError: Can not write request body for {request.url}")

    settings = settings_for(scripted, api_key=api_key, max_attempts=1)
    async with OmnideskClient(settings, transport=MockTransport(unreachable)) as client:
        with pytest.raises(OmnideskUnavailable) as caught:
            await client.notify_user_end_chat(chat_session_id=SESSION_ID)

    assert "apiKey=***" in str(caught.value)
    assert "Ap%2Bi" not in str(caught.value)
    assert api_key not in str(caught.value)
