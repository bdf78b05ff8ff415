"""What the sandbox keeps: chats, numbering problems, attachments, availability, caps."""

import aiohttp

from omnidesk_sandbox.testing import Sandbox, running_sandbox

from .support import ACCOUNT_TOKEN, SERVER_TOKEN, SESSION_ID, message_form, post

NEW_MESSAGE = "/api/v2/chat/notifyUserNewChatMessage"


async def _send(
    sandbox: Sandbox, http: aiohttp.ClientSession, number: object, **fields: str
) -> int:
    form = message_form(messageNumber=None if number is None else str(number), **fields)
    status, body = await post(http, sandbox.url + NEW_MESSAGE, form)
    assert status == 200, body
    return int(body["ticketID"])


async def test_messages_of_one_session_go_to_one_ticket_in_order(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    tickets = {await _send(sandbox, http, n, message=f"turn {n}") for n in (1, 2, 3)}
    chat = sandbox.chat(SESSION_ID)
    assert tickets == {chat.ticket_id}
    assert [(m.number, m.text) for m in chat.messages] == [
        (1, "turn 1"),
        (2, "turn 2"),
        (3, "turn 3"),
    ]
    assert chat.numbering_problems == []


async def test_duplicate_gap_and_missing_numbers_are_recorded(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    for number in (1, 2, 2, 5, None):
        await _send(sandbox, http, number)
    assert sandbox.chat(SESSION_ID).numbering_problems == [
        "duplicate 2",
        "expected 3, got 5",
        "message 5 has no messageNumber",
    ]


async def test_a_message_after_the_end_reopens_the_same_ticket(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    first = await _send(sandbox, http, 1)
    status, _ = await post(
        http,
        sandbox.url + "/api/v2/message/notifyUserEndChat",
        {"chatServer": "http://127.0.0.1:9/hook", "chatSessionID": SESSION_ID},
    )
    assert status == 200
    second = await _send(sandbox, http, 2)
    chat = sandbox.chat(SESSION_ID)
    assert first == second
    assert not chat.ended and chat.reopened == 1


async def test_customer_details_are_kept_with_the_chat(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    await _send(
        sandbox,
        http,
        1,
        customerName="Jane Doe",
        emailAddress="jane@example.com",
        url="https://www.brand.com/support",
    )
    chat = sandbox.chat(SESSION_ID)
    assert (chat.customer_name, chat.email_address, chat.url) == (
        "Jane Doe",
        "jane@example.com",
        "https://www.brand.com/support",
    )


async def test_a_customer_file_is_kept_and_downloadable(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    await _send(sandbox, http, 1)
    form = aiohttp.FormData()
    form.add_field("chatServer", "http://127.0.0.1:9/hook")
    form.add_field("chatAccountToken", ACCOUNT_TOKEN)
    form.add_field("sessionID", SESSION_ID)
    form.add_field("file", b"\x89PNG-bytes", filename="photo.png", content_type="image/png")
    async with http.post(sandbox.url + "/api/v2/chat/addAttachment", data=form) as response:
        assert response.status == 200, await response.text()
    [attachment] = sandbox.chat(SESSION_ID).attachments
    assert (attachment.name, attachment.content_type, attachment.size) == (
        "photo.png",
        "image/png",
        10,
    )
    assert sandbox.calls[-1].files[0].filename == "photo.png"
    async with http.get(
        f"{sandbox.url}/_sandbox/attachments/{attachment.attachment_id}"
    ) as download:
        assert await download.read() == b"\x89PNG-bytes"


async def test_an_attachment_without_a_file_part_names_file(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    await _send(sandbox, http, 1)
    fields = {
        "chatServer": "http://127.0.0.1:9/hook",
        "chatAccountToken": ACCOUNT_TOKEN,
        "sessionID": SESSION_ID,
    }
    status, body = await post(http, sandbox.url + "/api/v2/chat/addAttachment", fields)
    assert status == 400 and body["message"].startswith("file: ")
    assert sandbox.chat(SESSION_ID).attachments == []


async def test_an_attachment_over_the_cap_names_file(http: aiohttp.ClientSession) -> None:
    async with running_sandbox(max_file_bytes=100) as sandbox:
        await _send(sandbox, http, 1)
        form = aiohttp.FormData()
        form.add_field("chatServer", "http://127.0.0.1:9/hook")
        form.add_field("chatAccountToken", ACCOUNT_TOKEN)
        form.add_field("sessionID", SESSION_ID)
        form.add_field("file", b"x" * 101, filename="big.bin")
        async with http.post(sandbox.url + "/api/v2/chat/addAttachment", data=form) as response:
            body = await response.json()
        assert response.status == 400 and body["message"].startswith("file: must be at most 100")
        assert sandbox.chat(SESSION_ID).attachments == []


async def _config(http: aiohttp.ClientSession, url: str, **query: str) -> "tuple[int, dict]":  # type: ignore[type-arg]
    params = {"chatAccountToken": ACCOUNT_TOKEN, "chatServerToken": SERVER_TOKEN}
    params.update(query)
    async with http.get(url + "/requestChatConfig", params=params) as response:
        return response.status, await response.json()


def _hidden(config: "dict") -> bool:  # type: ignore[type-arg]
    return {"type": "hide_reason_no_agents_available"} in config["instructions"]


async def test_chat_config_tells_when_no_agent_is_available(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    status, online = await _config(http, sandbox.url)
    assert status == 200 and not _hidden(online)
    sandbox.set_agents_online(False)
    assert _hidden((await _config(http, sandbox.url))[1])
    async with http.post(sandbox.url + "/_sandbox/agents", json={"online": True}) as response:
        assert response.status == 200
    assert not _hidden((await _config(http, sandbox.url))[1])


async def test_chat_config_starts_offline_when_asked(http: aiohttp.ClientSession) -> None:
    async with running_sandbox(agents_online=False) as sandbox:
        assert _hidden((await _config(http, sandbox.url))[1])
        status, body = await post(
            http,
            sandbox.url + "/api/v2/chat/requestChatConfig",
            {"chatServer": "http://127.0.0.1:9/hook", "chatAccountToken": ACCOUNT_TOKEN},
        )
        assert status == 200 and _hidden(body)


async def test_chat_config_checks_both_tokens(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    status, body = await _config(http, sandbox.url, chatServerToken="wrongServerToken1")
    assert status == 400 and body["message"].startswith("chatServerToken: ")
    status, body = await _config(http, sandbox.url, chatAccountToken="wrongAccountToken1")
    assert status == 400 and body["message"].startswith("chatAccountToken: ")
    assert sandbox.calls[-1].query["chatServerToken"] == "****n1"


async def test_chats_are_capped_dropping_the_oldest_ended_first(
    http: aiohttp.ClientSession,
) -> None:
    async with running_sandbox(max_chats=2) as sandbox:
        ids = [f"rasa-chat-number-{n}" for n in range(3)]
        for chat_id in ids[:2]:
            await post(http, sandbox.url + NEW_MESSAGE, message_form(chatSessionID=chat_id))
        await post(
            http,
            sandbox.url + "/api/v2/chat/notifyUserEndChat",
            {"chatServer": "http://127.0.0.1:9/hook", "chatSessionID": ids[1]},
        )
        await post(http, sandbox.url + NEW_MESSAGE, message_form(chatSessionID=ids[2]))
        assert [c.chat_session_id for c in sandbox.chats] == [ids[0], ids[2]]


async def test_messages_per_chat_are_capped(http: aiohttp.ClientSession) -> None:
    async with running_sandbox(max_messages_per_chat=3) as sandbox:
        for number in range(1, 6):
            await _send(sandbox, http, number, message=f"turn {number}")
        chat = sandbox.chat(SESSION_ID)
        assert [m.text for m in chat.messages] == ["turn 3", "turn 4", "turn 5"]
        assert chat.messages_dropped == 2 and chat.numbering_problems == []


async def test_recorded_calls_are_capped(http: aiohttp.ClientSession) -> None:
    async with running_sandbox(max_calls=3) as sandbox:
        for number in range(1, 6):
            await _send(sandbox, http, number)
        assert len(sandbox.calls) == 3


async def test_reset_forgets_everything(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    await _send(sandbox, http, 1)
    sandbox.set_agents_online(False)
    async with http.post(sandbox.url + "/_sandbox/reset") as response:
        assert response.status == 200
    assert sandbox.chats == [] and sandbox.calls == [] and sandbox.state.agents_online


async def test_control_api_lists_chats_tickets_and_calls(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    await _send(sandbox, http, 1, emailAddress="jane@example.com")
    await post(
        http,
        sandbox.url + "/api/v2/message/chatbot",
        {"from": "jane@example.com", "subject": "Bot chat", "message": "# History\n<b>hi</b>"},
    )
    async with http.get(sandbox.url + "/_sandbox/chats") as response:
        chats = (await response.json())["chats"]
    async with http.get(sandbox.url + "/_sandbox/tickets") as response:
        tickets = (await response.json())["tickets"]
    async with http.get(sandbox.url + "/_sandbox/calls") as response:
        calls = (await response.json())["calls"]
    assert chats[0]["chat_session_id"] == SESSION_ID
    assert chats[0]["related_tickets"] == [tickets[0]["ticket_id"]]
    assert tickets[0]["html"] == "<h1>History</h1><p>&lt;b&gt;hi&lt;/b&gt;</p>"
    assert [c["endpoint"] for c in calls] == ["notifyUserNewChatMessage", "chatbot"]
    async with http.get(sandbox.url + "/_sandbox/chats/rasa-unknown-123") as response:
        assert response.status == 404
