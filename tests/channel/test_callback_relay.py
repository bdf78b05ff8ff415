"""A customer on an app backend (Rasa's callback channel) with an agent."""

import asyncio
import time
from typing import Any, List

import aiohttp
import pytest

from tests.channel.conftest import callback_setup


async def test_agent_reply_reaches_the_app_backend_with_name_and_picture() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("cust-1")
        assert setup.customer.texts() == ["Connecting you to a person."]
        result = await setup.server.sandbox.agent_reply(
            chat, "Hello!", name="Anna", picture="https://example.com/anna.png"
        )
        assert (result.status, result.body) == (200, "ok")
        posted = await setup.customer.wait_for(
            lambda r: [m for m in r if m.get("text") == "Hello!"]
        )
        assert posted[0]["recipient_id"] == "cust-1"
        assert posted[0]["agent"] == {"name": "Anna", "picture": "https://example.com/anna.png"}


async def test_replies_the_app_backend_refuses_arrive_in_order_once_it_is_back() -> None:
    # The backend answers 500 for a while: each reply is still answered ok to
    # Omnidesk (it is in the outbox), none is lost, and once the backend takes
    # posts again every reply arrives once, in the order the agent wrote them.
    async with callback_setup() as setup:
        chat = await setup.hand_over("cust-down")
        setup.customer.answer_status = 500
        for text in ("Are you there?", "I found your order", "It ships today"):
            result = await setup.server.sandbox.agent_reply(chat, text, name="Anna")
            assert (result.status, result.body) == (200, "ok")
        await asyncio.sleep(0.3)  # several refused tries
        assert "Are you there?" not in setup.customer.texts()

        setup.customer.answer_status = 200
        result = await setup.server.sandbox.agent_reply(chat, "Back again", name="Anna")
        assert (result.status, result.body) == (200, "ok")
        await setup.customer.wait_for(lambda r: [m for m in r if m.get("text") == "Back again"])
        await setup.server.relay.wait_idle(2.0)
        assert setup.customer.texts()[1:] == [
            "Are you there?",
            "I found your order",
            "It ships today",
            "Back again",
        ]


async def test_customer_turns_in_relay_reach_the_agent_not_the_bot() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("cust-2")
        assert await setup.say("cust-2", "where is my parcel?") == 200
        messages = setup.server.sandbox.chat(chat).messages
        assert [(m.number, m.text) for m in messages][-1] == (2, "where is my parcel?")
        assert [m.text for m in setup.server.bot.seen] == ["escalate cust-2"]


async def test_twenty_concurrent_customer_turns_arrive_numbered_in_order() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("cust-3")
        await asyncio.gather(*(setup.say("cust-3", f"line {i}") for i in range(20)))
        messages = setup.server.sandbox.chat(chat).messages[1:]
        assert [m.number for m in messages] == list(range(2, 22))


async def test_past_fifty_messages_go_without_a_number() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("cust-4")
        for i in range(50):
            await setup.say("cust-4", f"m{i}")
        messages = setup.server.sandbox.chat(chat).messages
        assert len(messages) == 51
        assert messages[49].number == 50
        assert messages[50].text == "m49"


async def test_omnidesk_failing_tells_the_customer_and_logs_the_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("cust-5")
        setup.server.sandbox.inject_fault("notifyUserNewChatMessage", status=500, count=10)
        with caplog.at_level("ERROR", logger="connectors.omnidesk.channel.turns"):
            await setup.say("cust-5", "are you there?")
        told = await setup.customer.wait_for(
            lambda r: [m for m in r if "did not reach the agent" in m.get("text", "")]
        )
        assert told
        assert "are you there?" not in [m.text for m in setup.server.sandbox.chat(chat).messages]
        assert any(chat in r.getMessage() and "500" in r.getMessage() for r in caplog.records)


async def test_customer_leaves_with_the_command_and_is_back_with_the_bot() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("cust-6")
        await setup.say("cust-6", "/leave_human_chat")
        await setup.server.sandbox.wait_for(lambda: setup.server.sandbox.chat(chat).ended)
        await setup.customer.wait_for(
            lambda r: "Back with the bot (ended_by_customer)." in [m.get("text") for m in r]
        )
        await setup.say("cust-6", "hello again")
        await setup.customer.wait_for(lambda r: "bot: hello again" in [m.get("text") for m in r])


async def test_idle_chat_times_out_and_the_bot_takes_over() -> None:
    async with callback_setup(inactivity_timeout=0.3, agent_wait_notice=0) as setup:
        chat = await setup.hand_over("cust-7")
        await setup.server.sandbox.agent_reply(chat, "How can I help?", name="Anna")
        await setup.customer.wait_for(
            lambda r: "Back with the bot (timed_out)." in [m.get("text") for m in r], timeout=5
        )
        assert setup.server.sandbox.chat(chat).ended


async def test_a_customer_waiting_for_an_agent_is_not_timed_out_as_idle() -> None:
    # Told "no one has picked up yet, you can keep waiting", the customer waits in
    # silence: the inactivity timeout starts with the agent's first reply; until
    # then only queue_timeout ends the chat.
    async with callback_setup(
        inactivity_timeout=0.3, queue_timeout=1.5, agent_wait_notice=0.1
    ) as setup:
        chat = await setup.hand_over("cust-7q")
        await asyncio.sleep(1.0)
        assert not setup.server.sandbox.chat(chat).ended
        assert "Back with the bot (timed_out)." not in setup.customer.texts()
        await setup.customer.wait_for(
            lambda r: "Back with the bot (timed_out)." in [m.get("text") for m in r], timeout=5
        )
        assert setup.server.sandbox.chat(chat).ended


async def test_customer_is_told_once_when_no_agent_picks_up() -> None:
    async with callback_setup(agent_wait_notice=0.2) as setup:
        await setup.hand_over("cust-8")
        await setup.customer.wait_for(
            lambda r: [
                m for m in r if m.get("text") == "Still looking for someone (from the domain)."
            ]
        )
        await asyncio.sleep(0.5)
        notices = [m for m in setup.customer.received if "Still looking" in m.get("text", "")]
        assert len(notices) == 1


async def test_agent_file_is_sent_as_an_unguessable_link_that_serves_it() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("cust-9")
        png = b"\x89PNG\r\n\x1a\n" + b"0" * 100
        result = await setup.server.sandbox.agent_upload(chat, "photo.png", png, "image/png")
        assert result.status == 200
        posted = await setup.customer.wait_for(lambda r: [m for m in r if "image" in m])
        url = posted[0]["image"]
        assert url.startswith(setup.server.url + "/webhooks/omnidesk/files/")
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as resp:
                assert resp.status == 200
                assert await resp.read() == png
                assert resp.headers["Content-Type"].startswith("image/png")
            async with session.get(url.replace("/files/", "/files/x")) as resp:
                assert resp.status == 404


async def test_agent_typing_reaches_the_app_backend() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("cust-10")
        await setup.server.sandbox.agent_typing(chat, True)
        await setup.customer.wait_for(lambda r: [m for m in r if m.get("typing") is True])


async def test_relayed_turns_land_in_the_tracker_before_the_end_intent() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("cust-11")
        await setup.say("cust-11", "my question")
        await setup.server.sandbox.agent_reply(chat, "my answer", name="Anna")
        await setup.customer.wait_for(lambda r: [m for m in r if m.get("text") == "my answer"])
        started = time.monotonic()
        await setup.server.sandbox.agent_end(chat)
        await setup.customer.wait_for(
            lambda r: "Back with the bot (ended_by_agent)." in [m.get("text") for m in r]
        )
        assert time.monotonic() - started < 10
        agent = setup.server.app.ctx.agent
        tracker = await agent.tracker_store.retrieve("cust-11")
        relayed = [
            (type(e).__name__, e.text, e.metadata["omnidesk"]["role"])
            for e in tracker.events
            if getattr(e, "metadata", None) and "omnidesk" in e.metadata
        ]
        assert relayed == [
            ("UserUttered", "my question", "customer"),
            ("BotUttered", "my answer", "agent"),
        ]


async def test_an_open_chat_reaches_the_tracker_once_its_turns_waited_the_record_interval() -> None:
    async with callback_setup(record_interval=3) as setup:
        chat = await setup.hand_over("cust-12")
        await setup.say("cust-12", "still there?")
        await setup.server.sandbox.agent_reply(chat, "yes", name="Anna")
        await setup.customer.wait_for(lambda r: [m for m in r if m.get("text") == "yes"])
        store = setup.server.app.ctx.agent.tracker_store

        def relayed(tracker: Any) -> List[str]:
            return [
                e.text for e in tracker.events if "omnidesk" in (getattr(e, "metadata", None) or {})
            ]

        await setup.server.channel.sweeper.sweep()  # the turns are younger than 3 s
        assert relayed(await store.get_or_create_tracker("cust-12")) == []

        # The background sweeper writes them once they have waited 3 s.
        deadline = asyncio.get_running_loop().time() + 10
        while relayed(await store.retrieve("cust-12")) != ["still there?", "yes"]:
            assert asyncio.get_running_loop().time() < deadline, "never written"
            await asyncio.sleep(0.1)
        assert await setup.server.relay.handoff_of("cust-12") is not None  # still open


async def test_an_agent_message_in_the_moment_before_the_handoff_registers_is_delivered() -> None:
    # The action opens the chat, then its control payload reaches the channel a
    # little later; Omnidesk may already call messageForCustomer in between.
    # A generous grace, so a slow machine cannot miss it.
    async with callback_setup(new_chat_grace=3) as setup:
        started = await setup.server.open_chat()
        setup.server.escalate_on("escalate early", started)
        greeting = asyncio.ensure_future(
            setup.server.sandbox.agent_reply(started.chat_session_id, "Welcome!", name="Omnidesk")
        )
        await asyncio.sleep(0.1)
        assert not greeting.done()
        await setup.say("cust-early", "escalate early")
        result = await greeting
        assert (result.status, result.body) == (200, "ok")
        await setup.customer.wait_for(lambda r: [m for m in r if m.get("text") == "Welcome!"])
