"""What each of the six calls puts on the wire, and what the client makes of the answer."""

import asyncio
import subprocess
import sys
from typing import Any, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.omnidesk import rules
from connectors.omnidesk.client import ChatConfig, ChatResult
from connectors.omnidesk.settings import SPEC_END_CHAT_PATH
from tests.client.fake_omnidesk import (
    ACCOUNT_TOKEN,
    API_KEY,
    CHAT_SERVER,
    SERVER_TOKEN,
    SESSION_ID,
    FakeOmnidesk,
    Reply,
)


def assert_multipart_post(request, path: str) -> None:
    assert request.method == "POST"
    assert request.path == path
    assert request.query == {}
    assert request.content_type == "multipart/form-data"
    for part in request.parts:
        if part.filename is None:
            assert part.content_type == "text/plain; charset=utf-8"


async def test_a_customer_message_carries_every_field_omnidesk_documents(omnidesk, make_client):
    client = make_client()

    result = await client.notify_user_new_chat_message(
        chat_session_id=SESSION_ID,
        message="My parcel never arrived",
        message_number=3,
        url="https://shop.example.com/support",
        customer_name="José Müller",
        email_address="jose@example.com",
        phone_number="+31201234567",
    )

    (request,) = omnidesk.requests
    assert_multipart_post(request, "/api/v2/chat/notifyUserNewChatMessage")
    assert [part.name for part in request.parts] == [
        "messageNumber",
        "url",
        "message",
        "channelID",
        "chatAccountToken",
        "chatSessionID",
        "chatServer",
        "customerName",
        "emailAddress",
        "phoneNumber",
    ]
    assert request.fields == {
        "messageNumber": "3",
        "url": "https://shop.example.com/support",
        "message": "My parcel never arrived",
        "channelID": "8",
        "chatAccountToken": ACCOUNT_TOKEN,
        "chatSessionID": SESSION_ID,
        "chatServer": CHAT_SERVER,
        "customerName": "Jose Muller",
        "emailAddress": "jose@example.com",
        "phoneNumber": "+31201234567",
    }
    assert result == ChatResult(ticket_id=12312, message="Message sent.", raw=result.raw)
    assert result.raw == {"type": "result", "message": "Message sent.", "ticketID": 12312}


async def test_optional_message_fields_are_left_out_when_not_given(omnidesk, make_client):
    await make_client().notify_user_new_chat_message(chat_session_id=SESSION_ID, message="Hi")

    assert omnidesk.requests[0].fields == {
        "message": "Hi",
        "channelID": "8",
        "chatAccountToken": ACCOUNT_TOKEN,
        "chatSessionID": SESSION_ID,
        "chatServer": CHAT_SERVER,
    }


async def test_a_customer_name_with_nothing_left_after_cleaning_is_dropped(omnidesk, make_client):
    await make_client().notify_user_new_chat_message(
        chat_session_id=SESSION_ID, message="Hi", customer_name="李小龍 ✨"
    )

    assert "customerName" not in omnidesk.requests[0].fields


async def test_an_attachment_is_a_file_part_with_its_name_and_type(omnidesk, make_client):
    content = b"\x89PNG\r\n\x1a\n" + bytes(range(256))

    result = await make_client().add_attachment(
        chat_session_id=SESSION_ID,
        filename="receipt.png",
        content=content,
        content_type="image/png",
    )

    (request,) = omnidesk.requests
    assert_multipart_post(request, "/api/v2/chat/addAttachment")
    assert [part.name for part in request.parts] == [
        "file",
        "chatServer",
        "chatAccountToken",
        "sessionID",
    ]
    file_part = request.part("file")
    assert file_part.filename == "receipt.png"
    assert file_part.content_type == "image/png"
    assert file_part.data == content
    assert request.fields == {
        "chatServer": CHAT_SERVER,
        "chatAccountToken": ACCOUNT_TOKEN,
        "sessionID": SESSION_ID,
    }
    assert result.ticket_id == 12312


async def test_an_attachment_name_is_sent_in_characters_that_need_no_quoting(omnidesk, make_client):
    await make_client().add_attachment(
        chat_session_id=SESSION_ID,
        filename="C:\\Users\\jo\\Factuur maart (é).pdf",
        content=b"%PDF-1.4",
        content_type="application/pdf",
    )

    assert omnidesk.requests[0].part("file").filename == "Factuur_maart_e_.pdf"


async def test_an_attachment_type_is_sent_without_its_parameters(omnidesk, make_client):
    # The channel's upload check takes "text/plain; charset=utf-8"; so does the client.
    await make_client().add_attachment(
        chat_session_id=SESSION_ID,
        filename="notes.txt",
        content=b"hello",
        content_type="text/plain; charset=utf-8",
    )

    file_part = omnidesk.requests[0].part("file")
    assert file_part.content_type == "text/plain"
    assert file_part.data == b"hello"


async def test_a_typing_event_names_the_session_and_the_event(omnidesk, make_client):
    await make_client().notify_user_new_chat_event(
        chat_session_id=SESSION_ID, event="startedtyping"
    )

    (request,) = omnidesk.requests
    assert_multipart_post(request, "/api/v2/chat/notifyUserNewChatEvent")
    assert [part.name for part in request.parts] == [
        "chatServer",
        "chatSessionID",
        "event",
        "chatAccountToken",
    ]
    assert request.fields == {
        "chatServer": CHAT_SERVER,
        "chatSessionID": SESSION_ID,
        "event": "startedtyping",
        "chatAccountToken": ACCOUNT_TOKEN,
    }


async def test_ending_a_chat_follows_the_api_document_path_by_default(omnidesk, make_client):
    await make_client().notify_user_end_chat(chat_session_id=SESSION_ID)

    (request,) = omnidesk.requests
    assert_multipart_post(request, "/api/v2/message/notifyUserEndChat")
    assert request.fields == {
        "chatSessionID": SESSION_ID,
        "chatServer": CHAT_SERVER,
        "chatAccountToken": ACCOUNT_TOKEN,
    }


async def test_ending_a_chat_uses_the_configured_path(omnidesk, make_client):
    await make_client(end_chat_path=SPEC_END_CHAT_PATH).notify_user_end_chat(
        chat_session_id=SESSION_ID
    )

    assert omnidesk.requests[0].path == "/api/v2/chat/notifyUserEndChat"


async def test_a_chatbot_log_carries_the_transcript_and_the_brand(omnidesk, make_client):
    result = await make_client(brand_id="7").create_chatbot_log(
        message="**Customer**: where is my parcel?\n\n**Bot**: let me check",
        subject="Chat with the support bot",
        from_address="jane@example.com",
    )

    (request,) = omnidesk.requests
    assert_multipart_post(request, "/api/v2/message/chatbot")
    assert [part.name for part in request.parts] == [
        "from",
        "subject",
        "message",
        "brandID",
        "chatAccountToken",
    ]
    assert request.fields == {
        "from": "jane@example.com",
        "subject": "Chat with the support bot",
        "message": "**Customer**: where is my parcel?\n\n**Bot**: let me check",
        "brandID": "7",
        "chatAccountToken": ACCOUNT_TOKEN,
    }
    assert result.ticket_id == 12312


async def test_a_chatbot_log_brand_argument_wins_and_from_may_be_a_phone(omnidesk, make_client):
    await make_client(brand_id="7").create_chatbot_log(
        message="history", subject="Chat", from_address="+31201234567", brand_id="9"
    )

    assert omnidesk.requests[0].fields["brandID"] == "9"
    assert omnidesk.requests[0].fields["from"] == "+31201234567"


async def test_a_chatbot_log_without_sender_or_brand_leaves_them_out(omnidesk, make_client):
    await make_client().create_chatbot_log(message="history", subject="Chat")

    assert set(omnidesk.requests[0].fields) == {"subject", "message", "chatAccountToken"}


async def test_chat_config_is_a_get_with_both_tokens_in_the_query(omnidesk, make_client):
    omnidesk.script("/chat/requestChatConfig", Reply(body={"instructions": []}))

    config = await make_client().request_chat_config()

    (request,) = omnidesk.requests
    assert request.method == "GET"
    assert request.path == "/chat/requestChatConfig"
    assert request.query == {"chatAccountToken": ACCOUNT_TOKEN, "chatServerToken": SERVER_TOKEN}
    assert request.parts == []
    assert config == ChatConfig(agents_available=True, raw={"instructions": []})


@pytest.mark.parametrize(
    "answer",
    [
        {"instructions": [{"type": "hide_reason_no_agents_available"}]},
        {"config": {"chat": {"instructions": [[{"type": "hide_reason_no_agents_available"}]]}}},
        {"instructions": {"hide": {"type": "hide_reason_no_agents_available", "value": True}}},
    ],
)
async def test_no_agents_instruction_anywhere_means_no_agents(omnidesk, make_client, answer):
    omnidesk.script("/chat/requestChatConfig", Reply(body=answer))

    config = await make_client().request_chat_config()

    assert config.agents_available is False
    assert config.raw == answer


async def test_other_instructions_mean_agents_are_available(omnidesk, make_client):
    answer = {
        "instructions": [{"type": "show_greeting"}],
        "text": "hide_reason_no_agents_available",
    }
    omnidesk.script("/chat/requestChatConfig", Reply(body=answer))

    assert (await make_client().request_chat_config()).agents_available is True


async def test_an_api_key_goes_on_every_url(omnidesk, make_client):
    client = make_client(api_key=API_KEY)

    await client.notify_user_new_chat_message(chat_session_id=SESSION_ID, message="Hi")
    await client.add_attachment(
        chat_session_id=SESSION_ID, filename="a.txt", content=b"a", content_type="text/plain"
    )
    await client.notify_user_new_chat_event(chat_session_id=SESSION_ID, event="stoppedtyping")
    await client.notify_user_end_chat(chat_session_id=SESSION_ID)
    await client.create_chatbot_log(message="history", subject="Chat")
    await client.request_chat_config()

    assert len(omnidesk.requests) == 6
    for request in omnidesk.requests[:5]:
        assert request.query == {"apiKey": API_KEY}
        assert request.fields["chatAccountToken"] == ACCOUNT_TOKEN
    assert omnidesk.requests[5].query == {
        "chatAccountToken": ACCOUNT_TOKEN,
        "chatServerToken": SERVER_TOKEN,
        "apiKey": API_KEY,
    }


@pytest.mark.parametrize(
    ("ticket", "expected"), [(12312, 12312), ("12312", 12312), (None, None), ("T-1", None)]
)
async def test_a_ticket_id_is_read_as_a_number_when_it_is_one(
    omnidesk: FakeOmnidesk, make_client, ticket, expected
):
    body = {"type": "result", "message": "Message sent."}
    if ticket is not None:
        body["ticketID"] = ticket
    omnidesk.script("/api/v2/chat/notifyUserEndChat", Reply(body=body))

    result = await make_client(end_chat_path=SPEC_END_CHAT_PATH).notify_user_end_chat(
        chat_session_id=SESSION_ID
    )

    assert result.ticket_id == expected


async def test_one_session_serves_many_calls_and_close_ends_it(omnidesk, make_client):
    client = make_client()
    await client.notify_user_end_chat(chat_session_id=SESSION_ID)
    await client.notify_user_end_chat(chat_session_id=SESSION_ID)

    await client.close()

    with pytest.raises(RuntimeError, match="closed"):
        await client.notify_user_end_chat(chat_session_id=SESSION_ID)
    assert len(omnidesk.requests) == 2


async def test_the_client_is_an_async_context_manager(omnidesk, make_client):
    async with make_client() as client:
        await client.notify_user_end_chat(chat_session_id=SESSION_ID)

    with pytest.raises(RuntimeError, match="closed"):
        await client.request_chat_config()


def test_importing_the_client_loads_neither_rasa_nor_sanic():
    code = (
        "import sys, connectors.omnidesk.client, connectors.omnidesk.settings\n"
        "loaded = sorted(m for m in ('rasa', 'rasa_sdk', 'sanic') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr


# -- the body on the wire ------------------------------------------------------------


async def _aiohttp_body(parts: Any, boundary: str) -> bytes:
    """What aiohttp's own multipart writer writes for ``parts`` under ``boundary``."""
    import aiohttp

    writer = aiohttp.MultipartWriter("form-data", boundary=boundary)
    for part in parts:
        value = rules.valid_text(part.value) if isinstance(part.value, str) else part.value
        payload = writer.append(
            value, {"Content-Type": part.content_type or "text/plain; charset=utf-8"}
        )
        filename = rules.valid_text(part.filename) if part.filename else None
        if filename:
            payload.set_content_disposition("form-data", name=part.name, filename=filename)
        else:
            payload.set_content_disposition("form-data", name=part.name)
    chunks: List[bytes] = []

    class Sink:
        async def write(self, chunk: bytes) -> None:
            chunks.append(bytes(chunk))

    await writer.write(Sink())  # type: ignore[arg-type]
    return b"".join(chunks)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(
        st.tuples(
            st.sampled_from(["message", "chatSessionID", "file", "chatServer"]),
            st.one_of(st.text(max_size=40), st.binary(max_size=40)),
            st.one_of(st.none(), st.text(min_size=1, max_size=20)),
            st.sampled_from([None, "image/png", "application/pdf"]),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_the_body_is_byte_for_byte_what_aiohttps_writer_makes(values: Any) -> None:
    from connectors.omnidesk.client import _multipart, _Part

    parts = [
        _Part(name, value, filename, content_type) for name, value, filename, content_type in values
    ]
    body, content_type = _multipart(parts)
    boundary = content_type.split("boundary=", 1)[1]
    assert body == asyncio.run(_aiohttp_body(parts, boundary))
