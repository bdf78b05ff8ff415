"""The agent's actions reach the bot's hookpoints exactly as Omnidesk sends them."""

import base64

import aiohttp

from omnidesk_sandbox.testing import Sandbox

from .support import SESSION_ID, Receiver, message_form, post

NEW_MESSAGE = "/api/v2/chat/notifyUserNewChatMessage"
HOOK_PATH = "/webhooks/omnidesk/hook/secret-0123456789abcdef/"


async def _open_chat(sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver) -> None:
    status, body = await post(http, sandbox.url + NEW_MESSAGE, message_form(receiver.chat_server))
    assert status == 200, body


async def test_a_reply_posts_message_for_customer_with_all_four_fields(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    await _open_chat(sandbox, http, receiver)
    result = await sandbox.agent_reply(
        SESSION_ID, "Hello, I am Anna", name="Anna", picture="https://cdn.example.com/anna.png"
    )
    assert (result.status, result.body, result.ok) == (200, "ok", True)
    [request] = receiver.requests
    assert (request.method, request.path) == ("POST", HOOK_PATH + "messageForCustomer")
    assert request.content_type == "multipart/form-data"
    assert request.fields == {
        "picture": "https://cdn.example.com/anna.png",
        "name": "Anna",
        "message": "Hello, I am Anna",
        "sessionID": SESSION_ID,
    }
    assert sandbox.chat(SESSION_ID).status == "active"


async def test_a_reply_uses_the_agent_profile_by_default(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    await _open_chat(sandbox, http, receiver)
    sandbox.set_agent_profile("Bob", "https://cdn.example.com/bob.png")
    await sandbox.agent_reply(SESSION_ID, "Hi")
    assert receiver.requests[0].fields["name"] == "Bob"
    assert receiver.requests[0].fields["picture"] == "https://cdn.example.com/bob.png"


async def test_typing_posts_typing_true_then_false_with_capital_names(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    await _open_chat(sandbox, http, receiver)
    await sandbox.agent_typing(SESSION_ID, True)
    await sandbox.agent_typing(SESSION_ID, False)
    requests = receiver.of("typingIndicatorForCustomer")
    assert [r.fields for r in requests] == [
        {"Typing": "true", "SessionID": SESSION_ID},
        {"Typing": "false", "SessionID": SESSION_ID},
    ]
    assert all(r.content_type == "multipart/form-data" for r in requests)


async def test_an_upload_posts_the_file_and_session_id(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    await _open_chat(sandbox, http, receiver)
    await sandbox.agent_upload(SESSION_ID, "invoice.pdf", b"%PDF-1.4 test", "application/pdf")
    [request] = receiver.of("uploadForCustomer")
    assert request.path == HOOK_PATH + "uploadForCustomer"
    assert request.fields == {"sessionID": SESSION_ID}
    file = request.files["file"]
    assert (file.filename, file.content_type, file.data) == (
        "invoice.pdf",
        "application/pdf",
        b"%PDF-1.4 test",
    )


async def test_stopping_the_chat_posts_end_session_and_ends_it(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    await _open_chat(sandbox, http, receiver)
    await sandbox.agent_end(SESSION_ID)
    [request] = receiver.of("endSession")
    assert request.fields == {"sessionID": SESSION_ID}
    chat = sandbox.chat(SESSION_ID)
    assert chat.ended and chat.ended_by == "agent"


async def test_a_failing_hookpoint_is_reported_not_hidden(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    await _open_chat(sandbox, http, receiver)
    receiver.status["messageForCustomer"] = 404
    result = await sandbox.agent_reply(SESSION_ID, "Anyone there?")
    assert (result.status, result.body, result.ok) == (404, "nope", False)
    [action] = sandbox.chat(SESSION_ID).agent_actions
    assert action.result.status == 404
    assert sandbox.chat(SESSION_ID).status == "waiting"


async def test_an_unreachable_hookpoint_says_why(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    status, _ = await post(http, sandbox.url + NEW_MESSAGE, message_form("http://127.0.0.1:9/hook"))
    assert status == 200
    result = await sandbox.agent_reply(SESSION_ID, "Hello?")
    assert result.status is None and not result.ok
    assert result.error and "ClientConnectorError" in result.error


async def test_control_api_actions_answer_the_hookpoint_result(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    await _open_chat(sandbox, http, receiver)
    base = f"{sandbox.url}/_sandbox/chats/{SESSION_ID}"
    async with http.post(base + "/reply", json={"message": "Hi", "name": "Anna"}) as response:
        assert (await response.json())["hookpoint_status"] == 200
    async with http.post(base + "/typing", json={"typing": True}) as response:
        assert (await response.json())["hookpoint_body"] == "ok"
    upload = {
        "filename": "a.txt",
        "content_base64": base64.b64encode(b"hi").decode(),
        "content_type": "text/plain",
    }
    async with http.post(base + "/upload", json=upload) as response:
        assert (await response.json())["hookpoint_status"] == 200
    form = aiohttp.FormData()
    form.add_field("file", b"png", filename="b.png", content_type="image/png")
    async with http.post(base + "/upload", data=form) as response:
        assert (await response.json())["hookpoint_status"] == 200
    async with http.post(base + "/end") as response:
        assert (await response.json())["hookpoint_status"] == 200
    assert [r.hookpoint for r in receiver.requests] == [
        "messageForCustomer",
        "typingIndicatorForCustomer",
        "uploadForCustomer",
        "uploadForCustomer",
        "endSession",
    ]
    assert receiver.requests[2].files["file"].data == b"hi"
    assert receiver.requests[3].files["file"].filename == "b.png"
    async with http.post(base + "/reply", json={"message": "too late"}) as response:
        assert response.status == 409
    assert len(receiver.requests) == 5


async def test_agent_actions_on_unknown_chats_are_404(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        sandbox.url + "/_sandbox/chats/rasa-nobody-home-1/reply", json={"message": "hi"}
    ) as response:
        assert response.status == 404
