"""The customer's routes open only the customer's own handoff, at a bounded rate."""

import asyncio
from typing import Any, Dict, Tuple

import aiohttp
import socketio

from connectors.omnidesk.channel.routes import RateLimit, TypingDebounce
from tests.channel.conftest import callback_setup
from tests.channel.test_socketio_relay import persistent_widget_with_agent


async def post(url: str, **kwargs: Any) -> Tuple[int, Dict[str, Any], Dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.post(url, **kwargs) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def test_the_app_backend_gets_a_customer_token_when_the_handoff_starts() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("tok-1")
        details = next(m for m in setup.customer.received if "omnidesk_customer" in m)
        assert details["recipient_id"] == "tok-1"
        assert details["omnidesk_customer"]["customer_token"] == (
            setup.server.settings.customer_token(chat)
        )
        assert details["omnidesk_customer"]["upload_url"].endswith("/webhooks/omnidesk/upload")


async def test_the_customer_token_reaches_an_app_backend_that_was_down_when_the_handoff_started() -> (
    None
):
    async with callback_setup() as setup:
        started = await setup.server.open_chat()
        setup.server.escalate_on("escalate late-1", started)
        setup.customer.answer_status = 503
        await setup.say("late-1", "escalate late-1")
        await setup.server.wait_with_agent("late-1")
        await asyncio.sleep(0.5)
        assert not any("omnidesk_customer" in m for m in setup.customer.received)
        setup.customer.answer_status = 200
        details = await setup.customer.wait_for(
            lambda r: next((m for m in r if "omnidesk_customer" in m), None), timeout=15
        )
        assert details["omnidesk_customer"]["customer_token"] == (
            setup.server.settings.customer_token(started.chat_session_id)
        )


async def test_a_guessed_conversation_id_without_its_token_pushes_nothing() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("victim-1")
        event_url = f"{setup.server.url}/webhooks/omnidesk/event"
        for token in (
            None,
            "",
            "0" * 40,
            setup.server.settings.customer_token("rasa-other-chat-0"),
        ):
            body: Dict[str, Any] = {"sender": "victim-1", "event": "startedtyping"}
            if token is not None:
                body["token"] = token
            status, answer, _ = await post(event_url, json=body)
            assert status == 404, answer
        form = aiohttp.FormData()
        form.add_field("sender", "victim-1")
        form.add_field("file", b"png", filename="x.png", content_type="image/png")
        status, _, _ = await post(f"{setup.server.url}/webhooks/omnidesk/upload", data=form)
        assert status == 404
        assert not setup.server.sandbox.chat(chat).events
        assert not setup.server.sandbox.chat(chat).attachments
        # The header works as well as the field.
        status, _, _ = await post(
            event_url,
            json={"sender": "victim-1", "event": "startedtyping"},
            headers={"X-Omnidesk-Customer-Token": setup.customer_token("victim-1")},
        )
        assert status == 200


async def test_a_conversation_calling_too_often_is_answered_429() -> None:
    async with callback_setup() as setup:
        await setup.hand_over("busy-1")
        url = f"{setup.server.url}/webhooks/omnidesk/event"
        token = setup.customer_token("busy-1")
        statuses = []
        for i in range(40):
            event = "expandedchat" if i % 2 else "minimizedchat"
            status, _, headers = await post(
                url, json={"sender": "busy-1", "event": event, "token": token}
            )
            statuses.append(status)
        assert 429 in statuses
        assert statuses.count(200) <= 21
        assert int(headers["Retry-After"]) >= 1


async def test_repeated_typing_events_reach_omnidesk_once() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("typing-1")
        url = f"{setup.server.url}/webhooks/omnidesk/event"
        token = setup.customer_token("typing-1")
        for _ in range(5):
            status, _, _ = await post(
                url, json={"sender": "typing-1", "event": "startedtyping", "token": token}
            )
            assert status == 200
        await post(url, json={"sender": "typing-1", "event": "stoppedtyping", "token": token})
        events = [e.name for e in setup.server.sandbox.chat(chat).events]
        assert events == ["startedtyping", "stoppedtyping"]


async def test_a_socket_cannot_send_events_for_another_session() -> None:
    async with persistent_widget_with_agent("customer-session-own") as (server, widget, chat):
        answer = await widget.client.call(
            "customer_event", {"event": "startedtyping", "session_id": "someone-else"}, timeout=5
        )
        assert answer["status"] == "error" and "session_id" in answer["message"]
        # Another socket that never confirmed a session cannot name this one.
        intruder = socketio.AsyncClient(reconnection=False)
        await intruder.connect(server.url, transports=["polling"], socketio_path="/socket.io")
        try:
            refused = await intruder.call(
                "customer_event",
                {"event": "startedtyping", "session_id": "customer-session-own"},
                timeout=5,
            )
        finally:
            await intruder.disconnect()
        assert refused["status"] == "error"
        await asyncio.sleep(0.1)
        assert not server.sandbox.chat(chat).events
        assert (await widget.client.call("customer_event", {"event": "startedtyping"}, timeout=5))[
            "status"
        ] == "ok"


async def test_the_socket_gets_its_handoff_token() -> None:
    async with persistent_widget_with_agent("customer-session-tok") as (server, widget, chat):
        await widget.wait_for(lambda: widget.handoff)
        assert widget.handoff["customer_token"] == server.settings.customer_token(chat)


def test_the_rate_limit_refills_over_time() -> None:
    now = [0.0]
    limit = RateLimit(burst=2, refill_seconds=1.0, clock=lambda: now[0])
    assert limit.allow("a") and limit.allow("a") and not limit.allow("a")
    assert limit.allow("b")
    now[0] = 1.0
    assert limit.allow("a") and not limit.allow("a")


def test_typing_is_debounced_but_a_change_goes_through() -> None:
    now = [0.0]
    debounce = TypingDebounce(seconds=2.0, clock=lambda: now[0])
    assert debounce.should_relay("a", "startedtyping")
    assert not debounce.should_relay("a", "startedtyping")
    assert debounce.should_relay("a", "stoppedtyping")
    assert debounce.should_relay("a", "expandedchat") and debounce.should_relay("a", "expandedchat")
    now[0] = 2.5
    assert debounce.should_relay("a", "stoppedtyping")
