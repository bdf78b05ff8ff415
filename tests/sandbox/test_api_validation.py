"""The sandbox rejects what Omnidesk would reject: 400 naming the field, and nothing changes."""

from typing import Dict, Optional

import aiohttp
import pytest

from omnidesk_sandbox.testing import Sandbox, running_sandbox

from .support import ACCOUNT_TOKEN, SERVER_TOKEN, SESSION_ID, message_form, post

NEW_MESSAGE = "/api/v2/chat/notifyUserNewChatMessage"

BAD_MESSAGE_FIELDS = [
    ("chatServer", None),
    ("chatServer", "abc"),
    ("chatServer", "http://bot.example.com/hook?secret=1"),
    ("chatServer", "http://bot_example.com"),
    ("chatSessionID", None),
    ("chatSessionID", "short"),
    ("chatSessionID", "x" * 66),
    ("chatSessionID", "rasa_0123456789"),
    ("chatSessionID", "user@example.com"),
    ("chatAccountToken", None),
    ("chatAccountToken", "short"),
    ("chatAccountToken", "sandbox-AccountToken1"),
    ("chatAccountToken", "otherAccountToken99"),
    ("channelID", "9"),
    ("channelID", "live"),
    ("message", None),
    ("message", ""),
    ("messageNumber", "0"),
    ("messageNumber", "51"),
    ("messageNumber", "two"),
    ("messageNumber", "1.5"),
    ("customerName", "Jos\u00e9!"),
    ("customerName", ""),
    ("emailAddress", "not-an-email"),
    ("phoneNumber", "0612345678"),
    ("phoneNumber", "+31 6 1234"),
]


@pytest.mark.parametrize("encoding", ["multipart", "urlencoded"])
@pytest.mark.parametrize(("field", "value"), BAD_MESSAGE_FIELDS)
async def test_a_bad_field_is_refused_by_name_and_changes_nothing(
    sandbox: Sandbox, http: aiohttp.ClientSession, field: str, value: Optional[str], encoding: str
) -> None:
    status, body = await post(
        http, sandbox.url + NEW_MESSAGE, message_form(**{field: value}), encoding
    )

    assert status == 400
    assert body["status"] == "error"
    assert body["message"].startswith(field + ": ")
    assert sandbox.chats == []
    assert sandbox.calls[-1].status == 400


GOOD_MESSAGE_FIELDS = [
    ("chatServer", "bot.example.com"),
    ("chatServer", "https://bot.example.com:8443/webhooks/omnidesk/hook/abc-123"),
    ("chatSessionID", "+31612345678"),
    ("chatSessionID", "a" * 65),
    ("channelID", None),
    ("messageNumber", None),
    ("messageNumber", "50"),
    ("customerName", "Jane Doe 2"),
    ("emailAddress", "jane@example.com"),
    ("phoneNumber", "+31612345678"),
    ("url", "https://www.brand.com/support?x=1"),
    ("additionalData", '{"plan": "gold"}'),
]


@pytest.mark.parametrize("encoding", ["multipart", "urlencoded"])
@pytest.mark.parametrize(("field", "value"), GOOD_MESSAGE_FIELDS)
async def test_a_good_field_opens_a_chat_and_answers_a_ticket(
    sandbox: Sandbox, http: aiohttp.ClientSession, field: str, value: Optional[str], encoding: str
) -> None:
    form = message_form(**{field: value})
    status, body = await post(http, sandbox.url + NEW_MESSAGE, form, encoding)

    assert status == 200, body
    assert body["type"] == "result"
    assert body["message"] == "Message sent."
    chat = sandbox.chat(form["chatSessionID"])
    assert body["ticketID"] == chat.ticket_id
    assert chat.messages[0].text == "I need a person"


async def test_a_json_body_is_refused_naming_the_content_type(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    async with http.post(sandbox.url + NEW_MESSAGE, json=message_form()) as response:
        body = await response.json()
    assert response.status == 400
    assert body["message"].startswith("Content-Type: ")
    assert sandbox.chats == []


async def _open_chat(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, sandbox.url + NEW_MESSAGE, message_form())
    assert status == 200, body


def _event_form(**overrides: Optional[str]) -> Dict[str, str]:
    """chatServer and chatSessionID, plus overrides; an override of None leaves the field out."""
    form: Dict[str, Optional[str]] = {
        "chatServer": "http://127.0.0.1:9/hook",
        "chatSessionID": SESSION_ID,
    }
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event", None),
        ("event", "typing"),
        ("event", "StartedTyping"),
        ("chatServer", None),
        ("chatSessionID", "rasa_0123456789"),
        ("chatAccountToken", "otherAccountToken99"),
    ],
)
async def test_a_bad_chat_event_is_refused_by_name(
    sandbox: Sandbox, http: aiohttp.ClientSession, field: str, value: Optional[str]
) -> None:
    await _open_chat(sandbox, http)
    form = _event_form(**{"event": "startedtyping", field: value})
    status, body = await post(http, sandbox.url + "/api/v2/chat/notifyUserNewChatEvent", form)
    assert status == 400
    assert body["message"].startswith(field + ": ")
    assert sandbox.chat(SESSION_ID).events == []


@pytest.mark.parametrize(
    "event", ["startedtyping", "stoppedtyping", "expandedchat", "minimizedchat"]
)
async def test_each_documented_event_is_recorded(
    sandbox: Sandbox, http: aiohttp.ClientSession, event: str
) -> None:
    await _open_chat(sandbox, http)
    status, body = await post(
        http, sandbox.url + "/api/v2/chat/notifyUserNewChatEvent", _event_form(event=event)
    )
    assert status == 200, body
    assert [e.name for e in sandbox.chat(SESSION_ID).events] == [event]
    assert sandbox.chat(SESSION_ID).customer_typing is (event == "startedtyping")


async def test_an_event_for_an_unknown_chat_names_chat_session_id(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    status, body = await post(
        http, sandbox.url + "/api/v2/chat/notifyUserNewChatEvent", _event_form(event="expandedchat")
    )
    assert status == 400
    assert body["message"].startswith("chatSessionID: no chat")


@pytest.mark.parametrize(
    "path", ["/api/v2/message/notifyUserEndChat", "/api/v2/chat/notifyUserEndChat"]
)
async def test_end_chat_on_either_path_ends_the_chat_by_the_customer(
    sandbox: Sandbox, http: aiohttp.ClientSession, path: str
) -> None:
    await _open_chat(sandbox, http)
    status, body = await post(http, sandbox.url + path, _event_form())
    assert status == 200, body
    chat = sandbox.chat(SESSION_ID)
    assert chat.ended and chat.ended_by == "customer"


async def test_end_chat_needs_chat_server(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    await _open_chat(sandbox, http)
    status, body = await post(
        http, sandbox.url + "/api/v2/message/notifyUserEndChat", _event_form(chatServer=None)
    )
    assert status == 400
    assert body["message"].startswith("chatServer: ")
    assert not sandbox.chat(SESSION_ID).ended


CHATBOT = "/api/v2/message/chatbot"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("from", "jane"),
        ("from", "0612345678"),
        ("subject", None),
        ("subject", " "),
        ("message", None),
        ("message", ""),
        ("brandID", "brand 1"),
    ],
)
async def test_a_bad_chatbot_log_is_refused_by_name(
    sandbox: Sandbox, http: aiohttp.ClientSession, field: str, value: Optional[str]
) -> None:
    form = {"from": "jane@example.com", "subject": "Chat with bot", "message": "**bot**: hi"}
    if value is None:
        del form[field]
    else:
        form[field] = value
    status, body = await post(http, sandbox.url + CHATBOT, form)
    assert status == 400
    assert body["message"].startswith(field + ": ")
    assert sandbox.tickets == []


@pytest.mark.parametrize("sender", ["jane@example.com", "+31612345678", None])
async def test_a_chatbot_log_makes_a_ticket(
    sandbox: Sandbox, http: aiohttp.ClientSession, sender: Optional[str]
) -> None:
    form = {
        "subject": "Chat with bot",
        "message": "- **customer**: hi\n- **bot**: hello",
        "brandID": "2",
    }
    if sender:
        form["from"] = sender
    status, body = await post(http, sandbox.url + CHATBOT, form, "urlencoded")
    assert status == 200, body
    [ticket] = sandbox.tickets
    assert body == {"type": "result", "message": "Message sent.", "ticketID": ticket.ticket_id}
    assert (ticket.sender, ticket.subject, ticket.brand_id) == (sender, "Chat with bot", "2")


async def test_api_key_is_required_and_checked_when_configured(
    http: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(ACCOUNT_TOKEN, SERVER_TOKEN, api_key="key123") as sandbox:
        missing = await post(http, sandbox.url + NEW_MESSAGE, message_form())
        wrong = await post(http, sandbox.url + NEW_MESSAGE + "?apiKey=nope", message_form())
        assert sandbox.chats == []
        right = await post(http, sandbox.url + NEW_MESSAGE + "?apiKey=key123", message_form())

        assert missing[0] == 401 and missing[1]["message"].startswith("apiKey: is required")
        assert wrong[0] == 401 and wrong[1]["message"].startswith("apiKey: ")
        assert right[0] == 200
        assert sandbox.calls[-1].query == {"apiKey": "****"}  # short keys are hidden whole


async def test_api_key_is_ignored_when_not_configured(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    status, _ = await post(http, sandbox.url + NEW_MESSAGE + "?apiKey=anything", message_form())
    assert status == 200


async def test_recorded_calls_mask_tokens(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    await post(http, sandbox.url + NEW_MESSAGE, message_form())
    call = sandbox.calls[-1]
    assert call.fields["chatAccountToken"] == "****n1"
    assert ACCOUNT_TOKEN not in repr(sandbox.calls)
    assert call.content_type == "multipart/form-data"
    assert (call.method, call.path, call.endpoint) == (
        "POST",
        NEW_MESSAGE,
        "notifyUserNewChatMessage",
    )
    assert call.status == 200 and call.body["ticketID"] == sandbox.chat(SESSION_ID).ticket_id
