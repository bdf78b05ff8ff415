"""A customer on Rasa's rest channel gets the agent too: by long poll, by stream, or in the next answer.

The channel runs on a real Sanic server wrapping ``rest``; the customer is a
real HTTP client (tests/channel/rest_client.py, as docs/channel.md describes
one); the sandbox plays Omnidesk and calls the hookpoints. Every agent message
must reach the customer once, in order, whichever way it is fetched.
"""

import asyncio
import json
import re
import sys
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict, List, Optional

import aiohttp

from tests.channel.conftest import ChannelServer, channel_server
from tests.channel.rest_client import RestCustomer, texts
from tests.docs.support import DOCS

AGENT_LINES = ["Hello, I am Anna", "I see your order", "It ships today"]


@asynccontextmanager
async def rest_customer(
    sender: str, server: Optional[ChannelServer] = None, **settings: Any
) -> AsyncIterator[RestCustomer]:
    async with aiohttp.ClientSession() as http:
        if server is not None:
            yield RestCustomer(server.url, sender, http)
            return
        async with channel_server({"rest": None}, **settings) as started:
            customer = RestCustomer(started.url, sender, http)
            customer.server = started  # type: ignore[attr-defined]
            yield customer


def server_of(customer: RestCustomer) -> ChannelServer:
    server: ChannelServer = customer.server  # type: ignore[attr-defined]
    return server


async def hand_over(customer: RestCustomer, server: Optional[ChannelServer] = None) -> str:
    """The customer asks for a person (the bot utters the control payload); the chat's id."""
    server = server or server_of(customer)
    started = await server.open_chat()
    server.escalate_on(f"escalate {customer.sender}", started)
    await customer.say(f"escalate {customer.sender}")
    assert customer.details, customer.answers[-1]
    return started.chat_session_id


def the_id(messages: List[Dict[str, Any]]) -> str:
    return str(messages[-1]["id"])


async def test_bot_answers_are_unchanged_and_the_escalating_answer_carries_the_details() -> None:
    async with rest_customer("rest-1") as customer:
        assert await customer.say("hi") == [{"recipient_id": "rest-1", "text": "bot: hi"}]
        chat = await hand_over(customer)
        settings = server_of(customer).settings
        answer = customer.answers[-1]
        assert texts(answer) == ["Connecting you to a person."]
        [details] = [m for m in answer if "custom" in m]
        base = f"{server_of(customer).url}/webhooks/omnidesk"
        assert details["custom"]["omnidesk_customer"] == {
            "customer_token": settings.customer_token(chat),
            "upload_url": f"{base}/upload",
            "event_url": f"{base}/event",
            "messages_url": f"{base}/messages",
            "stream_url": f"{base}/stream",
        }
        assert details["recipient_id"] == "rest-1" and details["id"]
        assert "omnidesk_handoff" not in str(answer)


async def test_a_long_poll_gets_every_agent_message_once_in_order_even_when_an_answer_is_lost() -> (
    None
):
    async with rest_customer("rest-poll") as customer:
        chat = await hand_over(customer)
        sandbox = server_of(customer).sandbox
        cursor = the_id(customer.answers[-1])
        for line in AGENT_LINES:
            assert (await sandbox.agent_reply(chat, line, name="Anna")).status == 200

        status, first, _ = await customer.poll(after=cursor)
        assert status == 200 and texts(first) == AGENT_LINES
        assert all(m["agent"]["name"] == "Anna" for m in first)
        # The answer is lost on its way: the same cursor fetches the same messages again.
        status, again, _ = await customer.poll(after=cursor)
        assert again == first
        # The next poll acknowledges them; what the agent sends next follows alone.
        cursor = the_id(again)
        assert (await sandbox.agent_reply(chat, "Anything else?", name="Anna")).status == 200
        status, then, _ = await customer.poll(after=cursor)
        assert texts(then) == ["Anything else?"]
        status, nothing, _ = await customer.poll(after=the_id(then), wait=0)
        assert (status, nothing) == (200, [])


async def test_a_held_poll_answers_when_the_agent_writes() -> None:
    async with rest_customer("rest-held") as customer:
        chat = await hand_over(customer)
        cursor = the_id(customer.answers[-1])
        held = asyncio.ensure_future(customer.poll(after=cursor, wait=25))
        await asyncio.sleep(0.2)
        assert not held.done()
        await server_of(customer).sandbox.agent_reply(chat, "Here I am", name="Anna")
        status, messages, _ = await asyncio.wait_for(held, 10)
        assert (status, texts(messages)) == (200, ["Here I am"])


async def test_a_client_that_only_posts_gets_what_waits_in_its_next_answer_once() -> None:
    async with rest_customer("rest-post") as customer:
        chat = await hand_over(customer)
        sandbox = server_of(customer).sandbox
        for line in AGENT_LINES:
            await sandbox.agent_reply(chat, line, name="Anna")
        answer = await customer.say("thanks, where is it?")
        assert texts(answer) == AGENT_LINES
        assert [m.text for m in sandbox.chat(chat).messages][-1] == "thanks, where is it?"
        assert texts(await customer.say("ok")) == []
        # What a poll handed out is not carried by an answer as well.
        await sandbox.agent_reply(chat, "Polled", name="Anna")
        _status, polled, _ = await customer.poll(after=the_id(answer))
        assert texts(polled) == ["Polled"]
        assert texts(await customer.say("and?")) == []


async def test_the_end_of_the_chat_reaches_the_poll_then_the_bot_answers_again() -> None:
    async with rest_customer("rest-end") as customer:
        chat = await hand_over(customer)
        cursor = the_id(customer.answers[-1])
        await server_of(customer).sandbox.agent_end(chat)
        status, messages, _ = await customer.poll(after=cursor)
        while not any("omnidesk_ended" in (m.get("custom") or {}) for m in messages):
            more = await customer.poll(after=cursor)
            messages = more[1]
        assert texts(messages) == ["Back with the bot (ended_by_agent)."]
        assert messages[-1]["custom"] == {"omnidesk_ended": {"outcome": "ended_by_agent"}}
        # Acknowledged: that chat is over and the client has all of it.
        status, rest, _ = await customer.poll(after=the_id(messages))
        assert (status, rest) == (204, [])
        assert await customer.say("hello") == [{"recipient_id": "rest-end", "text": "bot: hello"}]


async def test_a_client_that_only_posts_hears_the_end_in_its_next_answer() -> None:
    async with rest_customer("rest-post-end") as customer:
        chat = await hand_over(customer)
        await server_of(customer).sandbox.agent_end(chat)
        await server_of(customer).relay.wait_idle(5)
        answer = await customer.say("hello?")
        assert texts(answer) == ["Back with the bot (ended_by_agent).", "bot: hello?"]
        assert any("omnidesk_ended" in (m.get("custom") or {}) for m in answer)
        assert texts(await customer.say("hi")) == ["bot: hi"]


async def test_a_stream_carries_messages_typing_and_the_end_and_resumes_after_its_last_id() -> None:
    async with rest_customer("rest-sse") as customer:
        chat = await hand_over(customer)
        sandbox = server_of(customer).sandbox
        cursor = the_id(customer.answers[-1])
        async with customer.stream(after=cursor) as (status, events):
            assert status == 200 and events is not None
            await sandbox.agent_typing(chat, True)
            await sandbox.agent_reply(chat, AGENT_LINES[0], name="Anna")
            typing, first = await events.until(2)
            assert (typing.name, typing.data["custom"]) == ("typing", {"omnidesk_typing": True})
            assert (first.name, first.data["text"], first.id) == (
                "message",
                AGENT_LINES[0],
                first.data["id"],
            )
            assert events.retry is not None
        # The page goes away and comes back: Last-Event-ID says what it had.
        for line in AGENT_LINES[1:]:
            await sandbox.agent_reply(chat, line, name="Anna")
        async with customer.stream(last_event_id=first.id) as (status, events):
            assert events is not None
            resumed = await events.until(2)
            assert [e.data["text"] for e in resumed] == AGENT_LINES[1:]
            await sandbox.agent_end(chat)
            rest = await events.until(3)
            assert [e.name for e in rest] == ["message", "ended"]
            assert rest[0].data["text"] == "Back with the bot (ended_by_agent)."
            assert rest[1].data["custom"]["omnidesk_ended"]["outcome"] == "ended_by_agent"
            last = rest[1].id
        # The EventSource comes back once more with the end's id: all acknowledged, 204 stops it.
        status, body = await customer.ticket()
        assert status == 200, body
        async with customer.open(body["url"], last_event_id=last) as (status, events):
            assert (status, events) == (204, None)
        status, _ = await customer.ticket()
        assert status == 404


async def test_wrong_tokens_tickets_and_cursors_are_refused() -> None:
    async with rest_customer("rest-refuse") as customer:
        await hand_over(customer)
        for token in ("", "0" * 40):
            status, body, _ = await customer.poll(token=token, wait=0)
            assert status == 404 and "sender" in body[0]["message"]
            assert (await customer.ticket(token=token))[0] == 404
        status, body, _ = await customer.poll(after="yesterday", wait=0)
        assert status == 400 and body[0]["message"].startswith("after:")
        status, ticket = await customer.ticket()
        forged = ticket["url"].replace("ticket=rasa-", "ticket=rasa-0")
        async with customer.open(forged) as (status, _):
            assert status == 404
        other = RestCustomer(customer.url, "rest-someone-else", customer.http, customer.details)
        async with other.open(ticket["url"].replace("rest-refuse", "rest-someone-else")) as (
            status,
            _,
        ):
            assert status == 404


async def test_an_expired_ticket_opens_nothing() -> None:
    async with rest_customer("rest-expired", stream_ticket_ttl=1) as customer:
        await hand_over(customer)
        _, ticket = await customer.ticket()
        assert ticket["expires_in"] == 1
        await asyncio.sleep(2.1)
        async with customer.open(ticket["url"]) as (status, _):
            assert status == 404


async def test_polls_and_streams_are_bounded_per_conversation_with_429_and_retry_after() -> None:
    async with rest_customer("rest-many") as customer:
        chat = await hand_over(customer)
        cursor = the_id(customer.answers[-1])
        held = [asyncio.ensure_future(customer.poll(after=cursor, wait=25)) for _ in range(4)]
        await asyncio.sleep(0.3)
        status, _body, headers = await customer.poll(after=cursor, wait=25)
        assert status == 429 and int(headers["Retry-After"]) >= 1
        async with customer.stream(after=cursor) as (status, _):
            assert status == 429
        await server_of(customer).sandbox.agent_reply(chat, "For all of you", name="Anna")
        for status, messages, _ in await asyncio.gather(*held):
            assert (status, texts(messages)) == (200, ["For all of you"])
        assert len(server_of(customer).channel.routes.held) == 0


async def test_a_socketio_conversation_is_not_polled() -> None:
    from tests.channel.test_socketio_relay import persistent_widget_with_agent

    async with persistent_widget_with_agent("sio-poll") as (server, _widget, chat):
        token = server.settings.customer_token(chat)
        async with aiohttp.ClientSession() as http, http.get(
            f"{server.url}/webhooks/omnidesk/messages",
            params={"sender": "sio-poll", "wait": "0"},
            headers={"X-Omnidesk-Customer-Token": token},
        ) as answer:
            assert answer.status == 409
            assert "only a rest conversation" in (await answer.json())["message"]


async def test_a_stream_on_one_instance_gets_what_the_agent_sends_to_the_other(
    sandbox: Any, redis_url: str
) -> None:
    shared = {"sandbox": sandbox, "switchboard_url": redis_url}
    async with channel_server({"rest": None}, **shared) as a, channel_server(
        {"rest": None}, **shared
    ) as b, rest_customer("rest-two", server=a) as customer:
        # Omnidesk calls B's hookpoints: the chat was opened with B's chatServer.
        started = await b.open_chat()
        a.escalate_on("escalate rest-two", started)
        await customer.say("escalate rest-two")
        chat = started.chat_session_id
        cursor = the_id(customer.answers[-1])
        async with customer.stream(after=cursor) as (status, events):
            assert status == 200 and events is not None
            for line in AGENT_LINES:
                result = await sandbox.agent_reply(chat, line, name="Anna")
                assert result.status == 200
            assert [e.data["text"] for e in await events.until(3)] == AGENT_LINES
        assert sandbox.chat(chat).chat_server.startswith(b.url)


def poll_client_from_the_docs() -> str:
    text = (DOCS / "channel.md").read_text(encoding="utf-8")
    found = re.search(r"^```python\n(# poll\.py:.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert found, "docs/channel.md has no ```python block starting # poll.py"
    return found.group(1)


async def test_the_documented_python_long_poll_client_prints_every_message_then_stops(
    tmp_path: Any,
) -> None:
    script = tmp_path / "poll.py"
    script.write_text(poll_client_from_the_docs(), encoding="utf-8")
    async with rest_customer("rest-docs-poll") as customer:
        chat = await hand_over(customer)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            customer.details["messages_url"],
            customer.sender,
            customer.token,
            stdout=asyncio.subprocess.PIPE,
        )
        sandbox = server_of(customer).sandbox
        for line in AGENT_LINES:
            await sandbox.agent_reply(chat, line, name="Anna")
        await sandbox.agent_end(chat)
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0
        printed = [json.loads(line) for line in out.decode().splitlines()]
        assert texts(printed) == [*AGENT_LINES, "Back with the bot (ended_by_agent)."]
        assert printed[-1]["custom"] == {"omnidesk_ended": {"outcome": "ended_by_agent"}}
        assert await server_of(customer).channel.outbox.read("rest-docs-poll", None, chat) == []
