"""Redis stopped under a running channel: the bot keeps answering, relayed turns are kept."""

import asyncio
import logging

import pytest

from tests.channel.conftest import RedisServer, callback_setup, channel_server
from tests.channel.test_socketio_relay import SOCKETIO, Widget


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    with_traceback = [r.getMessage() for r in caplog.records if r.exc_info]
    assert not with_traceback, with_traceback


async def test_bot_mode_turns_reach_the_bot_while_redis_is_down(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with callback_setup(switchboard_url=redis_server.url) as setup:
        assert await setup.say("down-1", "before") == 200
        redis_server.stop()
        with caplog.at_level(logging.INFO):
            for i in range(5):
                assert await setup.say("down-1", f"during {i}") == 200
        assert [m.text for m in setup.server.bot.seen][-5:] == [f"during {i}" for i in range(5)]
        outage_lines = [
            r
            for r in caplog.records
            if r.levelno >= logging.ERROR and "switchboard" in r.getMessage().lower()
        ]
        assert len(outage_lines) == 1  # one line for the outage, not one per turn
        no_tracebacks(caplog)
        redis_server.start()
        chat = await setup.hand_over("down-2")
        assert await setup.say("down-2", "after") == 200
        assert setup.server.sandbox.chat(chat).messages[-1].text == "after"


async def test_a_relayed_turn_during_an_outage_is_kept_and_sent_when_redis_is_back(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with callback_setup(switchboard_url=redis_server.url) as setup:
        chat = await setup.hand_over("down-3")
        handoff = await setup.server.relay.handoff_of("down-3")
        redis_server.stop()
        with caplog.at_level(logging.INFO):
            saying = asyncio.ensure_future(setup.say("down-3", "kept through the outage"))
            await setup.customer.wait_for(
                lambda r: [m for m in r if "trouble reaching" in m.get("text", "")]
            )
            redis_server.start()
            # A restarted Redis without persistence has lost the handoff: put it back,
            # as a Redis with persistence would have kept it.
            await setup.server.switchboard.start(handoff)
            assert await saying == 200
        texts = [m.text for m in setup.server.sandbox.chat(chat).messages]
        assert texts[-1] == "kept through the outage"
        assert "kept through the outage" not in [m.text for m in setup.server.bot.seen]
        no_tracebacks(caplog)


async def test_a_relayed_turn_is_not_given_to_the_bot_when_redis_stays_down(
    redis_server: RedisServer,
) -> None:
    async with callback_setup(switchboard_url=redis_server.url, outage_hold=1.5) as setup:
        await setup.hand_over("down-4")
        redis_server.stop()
        assert await setup.say("down-4", "lost cause") == 200
        texts = setup.customer.texts()
        assert any("trouble reaching" in t for t in texts)
        assert any("did not reach the agent" in t for t in texts)
        assert "lost cause" not in [m.text for m in setup.server.bot.seen]


async def test_an_escalation_that_cannot_register_ends_its_chat_and_tells_the_customer(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with callback_setup(switchboard_url=redis_server.url) as setup:
        started = await setup.server.open_chat()
        setup.server.escalate_on("escalate down-5", started)
        redis_server.stop()
        with caplog.at_level(logging.INFO):
            assert await setup.say("down-5", "escalate down-5") == 200
        assert setup.server.sandbox.chat(started.chat_session_id).ended
        texts = setup.customer.texts()
        assert texts[0] == "Connecting you to a person."
        assert any("could not connect you" in t for t in texts)
        no_tracebacks(caplog)


async def test_a_socketio_customer_in_bot_mode_is_answered_while_redis_is_down(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with channel_server(SOCKETIO, switchboard_url=redis_server.url) as server:
        widget = Widget()
        await widget.connect(server.url)
        try:
            redis_server.stop()
            with caplog.at_level(logging.INFO):
                await widget.say("anyone there?")
                await widget.wait_for(lambda: "bot: anyone there?" in widget.texts())
            no_tracebacks(caplog)
        finally:
            await widget.close()
