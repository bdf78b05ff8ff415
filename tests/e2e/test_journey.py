"""The whole journey on real processes: bot, handoff to a live agent, and back.

A customer greets the bot, asks for a person and gives an email address; the
transcript lands in Omnidesk's chatbot log and the chat opens; the agent and
the customer talk, type and send files both ways; the agent stops the chat and
the bot answers again; Rasa's tracker holds all of it. Once on socket.io, once
on the callback channel, against `rasa run`, `rasa run actions` and the sandbox.
"""

import struct
import zlib
from typing import Any, Dict, List, Union

import aiohttp
import pytest

from tests.e2e.people import CallbackCustomer, Desk, RasaApi, SocketCustomer, apoll

pytestmark = pytest.mark.e2e

Customer = Union[SocketCustomer, CallbackCustomer]

GREETING = "I'm the Example Shop assistant"
ASK_EMAIL = "at which email address can my colleagues reach you"
CONNECTING = "I'm looking for a colleague who can help you"
CONNECTED = "You're connected with our support team"
CLOSED_BY_AGENT = "Our colleague has closed the chat. I'm back"
ASKED_FOR_PERSON = "Chatbot handover: the customer asked for a person"


def png(seed: int) -> bytes:
    """A small valid PNG whose bytes differ per seed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes([seed % 256, 80, 160]) * 2 for _ in range(2))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


async def escalate(customer: Customer, email: str) -> None:
    """Greet, ask for a person, give the email the bot asks for; wait until connected."""
    await customer.say("hi")
    await customer.wait_for_text(GREETING)
    await customer.say("I want to talk to a person")
    await customer.wait_for_text(ASK_EMAIL)
    await customer.say(email)
    await customer.wait_for_text(CONNECTING)


async def chat_session_of(rasa: RasaApi, conversation_id: str) -> str:
    async def opened() -> Any:
        tracker = await rasa.tracker(conversation_id)
        slots = tracker["slots"]
        return slots.get("handoff_active") is True and slots.get("omnidesk_chat_session_id")

    return str(await apoll(opened, f"the handoff of {conversation_id} in the tracker"))


def omnidesk_role(event: Dict[str, Any]) -> Any:
    return ((event.get("metadata") or {}).get("omnidesk") or {}).get("role")


async def the_whole_journey(
    customer: Customer, desk: Desk, rasa: RasaApi, http: aiohttp.ClientSession
) -> None:
    email = f"{customer.channel}.{customer.id[-8:]}@example.com"

    # The bot answers, then hands over.
    await escalate(customer, email)
    await customer.wait_for_text(CONNECTED)
    chat_id = await chat_session_of(rasa, customer.id)
    assert not any("omnidesk_handoff" in str(m) for m in customer.messages), (
        "the control payload must never reach the customer"
    )

    # The transcript is in the chatbot log, and the chat opened with message 1.
    tickets = [t for t in await desk.tickets() if t["from"] == email]
    assert len(tickets) == 1, f"one chatbot-log ticket from {email}; got {tickets}"
    ticket = tickets[0]
    assert ticket["subject"] == ASKED_FOR_PERSON
    assert "Example Shop assistant" in ticket["message"]
    assert "talk to a person" in ticket["message"]
    chat = await desk.chat(chat_id)
    assert chat["email_address"] == email
    assert [m["number"] for m in chat["messages"]] == [1]
    assert f"ticket #{ticket['ticket_id']}" in chat["messages"][0]["text"]

    # The agent's reply reaches the customer with the agent's name.
    answer = await desk.reply(chat_id, "Hello, I'm Anna. How can I help?", name="Anna")
    assert answer["hookpoint_status"] == 200, answer
    await customer.wait_for_text("Hello, I'm Anna")
    agent_message = customer.agent_messages()[0]
    assert agent_message["text"] == "Hello, I'm Anna. How can I help?"
    assert agent_message["agent"]["name"] == "Anna"

    # Typing each way.
    assert await customer.send_event("startedtyping") == {"status": "ok"}
    await apoll(
        lambda: _chat_has_event(desk, chat_id, "startedtyping"), "the customer typing at the desk"
    )
    assert (await desk.typing(chat_id, True))["hookpoint_status"] == 200
    await customer.wait(lambda: customer.agent_typing_seen(True), "the agent typing")

    # The customer's next turns reach the agent, numbered 2, 3, 4 in order; the bot is silent.
    turns = ["My order 1234 has not arrived", "It was due last Monday", "Can you check?"]
    for turn in turns:
        await customer.say(turn)

    async def all_relayed() -> Any:
        messages = (await desk.chat(chat_id))["messages"]
        return len(messages) >= 4 and messages

    messages = await apoll(all_relayed, "the customer's turns at the desk")
    assert [(m["number"], m["text"]) for m in messages] == [
        (1, messages[0]["text"]),
        (2, turns[0]),
        (3, turns[1]),
        (4, turns[2]),
    ]
    assert (await desk.chat(chat_id))["numbering_problems"] == []

    # A file each way.
    customer_file = png(1)
    uploaded = await customer.upload("receipt.png", customer_file, "image/png")
    assert uploaded == {"status": "ok", "http_status": 200}
    attachments = (await desk.chat(chat_id))["attachments"]
    assert [(a["name"], a["size"]) for a in attachments] == [("receipt.png", len(customer_file))]
    assert await desk.attachment(attachments[0]["id"]) == customer_file

    agent_file = png(2)
    sent = await desk.upload(chat_id, "label.png", agent_file, "image/png")
    assert sent["hookpoint_status"] == 200, sent
    file_message = await customer.wait(customer.agent_file, "the agent's file")
    # uploadForCustomer carries no name; the file comes from the agent who wrote last.
    assert (file_message["agent"] or {}).get("name") == "Anna", file_message
    async with http.get(file_message["url"]) as download:
        assert download.status == 200
        assert download.content_type == "image/png"
        assert await download.read() == agent_file

    # The agent stops the chat; the customer is told and the bot answers again.
    before_end = len(customer.texts())
    assert (await desk.end(chat_id))["hookpoint_status"] == 200
    await customer.wait_for_text(CLOSED_BY_AGENT, after=before_end)
    after_end = len(customer.texts())
    await customer.say("hello")
    await customer.wait_for_text(GREETING, after=after_end)

    # The tracker holds the whole conversation, the human part marked.
    async def settled() -> Any:
        tracker = await rasa.tracker(customer.id)
        return tracker["slots"].get("handoff_active") is False and tracker

    tracker = await apoll(settled, "handoff_active back to false")
    assert tracker["slots"]["handoff_outcome"] == "ended_by_agent"
    assert tracker["slots"]["customer_email"] == email
    events: List[Dict[str, Any]] = tracker["events"]
    relayed_customer = [e["text"] for e in events if e["event"] == "user" and omnidesk_role(e)]
    assert relayed_customer == [*turns, "[file: receipt.png]"]
    relayed_agent = [
        (e["text"], e["metadata"]["omnidesk"].get("agent_name"))
        for e in events
        if e["event"] == "bot" and omnidesk_role(e) == "agent"
    ]
    assert relayed_agent[0] == ("Hello, I'm Anna. How can I help?", "Anna")
    assert len(relayed_agent) == 2
    assert "label.png" in relayed_agent[1][0] and relayed_agent[1][1] == "Anna"
    assert all(
        e["metadata"]["omnidesk"]["chat_session_id"] == chat_id for e in events if omnidesk_role(e)
    )

    texts = [(e["event"], e.get("text")) for e in events if e["event"] in ("user", "bot")]
    start = next(i for i, (_, text) in enumerate(texts) if text and CONNECTED in text)
    end = next(i for i, (_, text) in enumerate(texts) if text and CLOSED_BY_AGENT in text)
    bot_during_chat = [
        text
        for (kind, text), event in zip(
            texts[start + 1 : end],
            [e for e in events if e["event"] in ("user", "bot")][start + 1 : end],
        )
        if kind == "bot" and omnidesk_role(event) != "agent"
    ]
    assert bot_during_chat == [], "the bot must be silent while the agent is on"
    assert texts[-2:] == [("user", "hello"), ("bot", texts[-1][1])]
    assert GREETING in (texts[-1][1] or "")


async def _chat_has_event(desk: Desk, chat_id: str, name: str) -> bool:
    return any(e["name"] == name for e in (await desk.chat(chat_id))["events"])


async def test_socketio_customer_is_handed_to_an_agent_and_back(
    socket_customer: SocketCustomer, desk: Desk, rasa: RasaApi, http: aiohttp.ClientSession
) -> None:
    await the_whole_journey(socket_customer, desk, rasa, http)


async def test_callback_customer_is_handed_to_an_agent_and_back(
    callback_customer: CallbackCustomer, desk: Desk, rasa: RasaApi, http: aiohttp.ClientSession
) -> None:
    await the_whole_journey(callback_customer, desk, rasa, http)
