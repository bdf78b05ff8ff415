"""A customer on Rasa's rest channel reaches a live agent, on real processes.

`rasa run` wraps rest beside socketio and callback; the action server and the
sandbox run as in `make run`. The customer posts turns to
/webhooks/rest/webhook; the answer to the escalating turn carries the
handoff's details, and a long-poll client fetches the agent's messages,
losing some answers on purpose (it never uses them, and asks again with the
same cursor). Every agent message arrives once, in order; the chat's end
arrives too, and the bot answers the next post.
"""

import asyncio
from typing import Any, Dict, List

import aiohttp
import pytest

from tests.channel.rest_client import RestCustomer, texts
from tests.e2e.people import Desk, RasaApi, apoll, new_conversation_id
from tests.e2e.stack import Stack
from tests.e2e.test_journey import (
    ASK_EMAIL,
    CLOSED_BY_AGENT,
    CONNECTED,
    CONNECTING,
    GREETING,
    chat_session_of,
)

pytestmark = pytest.mark.e2e

AGENT_LINES = [f"Agent line {n}: about your order" for n in range(1, 13)]
LOSE_EVERY = 3  # one answer in three never reaches the client


async def test_a_long_poll_client_that_loses_answers_gets_every_agent_message_once_in_order(
    stack: Stack, desk: Desk, rasa: RasaApi, http: aiohttp.ClientSession
) -> None:
    customer = RestCustomer(stack.rasa_url, new_conversation_id("e2e-rest"), http)
    assert GREETING in " ".join(texts(await customer.say("hi")))
    assert ASK_EMAIL in " ".join(texts(await customer.say("I want to talk to a person")))
    answer = await customer.say(f"rest.{customer.sender[-8:]}@example.com")
    spoken = " ".join(texts(answer))
    assert CONNECTING in spoken and CONNECTED in spoken, answer
    details = [m for m in answer if "omnidesk_customer" in (m.get("custom") or {})]
    assert len(details) == 1 and customer.token, answer
    assert not any("omnidesk_handoff" in str(m) for m in answer)
    chat_id = await chat_session_of(rasa, customer.sender)

    async def agent_writes() -> None:
        for line in AGENT_LINES:
            sent = await desk.reply(chat_id, line, name="Anna")
            assert sent["hookpoint_status"] == 200, sent
            await asyncio.sleep(0.05)

    writing = asyncio.ensure_future(agent_writes())
    cursor = str(answer[-1]["id"])
    received: List[Dict[str, Any]] = []
    polls = lost = 0
    while len(received) < len(AGENT_LINES):
        status, messages, _ = await customer.poll(after=cursor, wait=10)
        assert status == 200, messages
        polls += 1
        if messages and polls % LOSE_EVERY == 0:
            lost += 1
            continue  # lost on the network: the same cursor asks again
        received += [m for m in messages if m.get("text")]
        if messages:
            cursor = str(messages[-1]["id"])
    await writing
    assert lost >= 1
    assert [m["text"] for m in received] == AGENT_LINES
    assert all(m["agent"]["name"] == "Anna" for m in received)
    assert len({m["id"] for m in received}) == len(AGENT_LINES)

    # The customer's turn goes to the agent; its answer carries nothing twice.
    assert texts(await customer.say("Thanks, that helps")) == []

    async def at_the_desk() -> Any:
        return any(
            m["text"] == "Thanks, that helps" for m in (await desk.chat(chat_id))["messages"]
        )

    await apoll(at_the_desk, "the rest customer's turn at the desk")

    # The agent ends the chat: the bot's words, then the end; then the bot answers posts.
    await desk.end(chat_id)
    tail: List[Dict[str, Any]] = []
    while not any("omnidesk_ended" in (m.get("custom") or {}) for m in tail):
        status, messages, _ = await customer.poll(after=cursor, wait=10)
        assert status == 200
        tail = messages
    assert any(CLOSED_BY_AGENT in text for text in texts(tail)), tail
    status, nothing, _ = await customer.poll(after=str(tail[-1]["id"]))
    assert (status, nothing) == (204, [])
    assert GREETING in " ".join(texts(await customer.say("hi")))
