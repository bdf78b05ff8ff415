"""The channel's own view of the handoff goes with every bot turn; an end always hands back."""

from typing import Any

from rasa.core.channels.channel import UserMessage

from connectors.omnidesk.channel.incoming import mark_with_bot
from tests.channel.conftest import callback_setup


async def test_a_bot_turn_carries_the_channels_view() -> None:
    async with callback_setup() as setup:
        assert await setup.say("view-1", "hello") == 200
        assert setup.server.bot.seen[-1].metadata["omnidesk"] == {"with_agent": False}


def test_a_clients_own_omnidesk_metadata_is_replaced_not_trusted() -> None:
    message = UserMessage(
        "hi", sender_id="x", metadata={"omnidesk": {"with_agent": True}, "url": "https://a.b"}
    )
    mark_with_bot(message)
    assert message.metadata == {"omnidesk": {"with_agent": False}, "url": "https://a.b"}


async def test_the_end_of_a_chat_carries_the_channels_view() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("view-2")
        await setup.server.sandbox.agent_end(chat)
        await setup.customer.wait_for(
            lambda r: "Back with the bot (ended_by_agent)." in [m.get("text") for m in r]
        )
        ended = setup.server.bot.seen[-1]
        assert ended.metadata["omnidesk"]["with_agent"] is False


async def test_an_end_whose_hand_back_fails_still_frees_the_customer_and_tells_them() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("view-3")

        async def broken_hand_back(*_: Any) -> bool:
            raise RuntimeError("the tracker store is down")

        async def broken_flush(*_: Any) -> None:
            raise RuntimeError("the tracker store is down")

        setup.server.rasa_side.hand_back = broken_hand_back
        setup.server.record.flush = broken_flush
        await setup.server.sandbox.agent_end(chat)
        await setup.customer.wait_for(
            lambda r: any("back with the assistant" in m.get("text", "") for m in r)
        )
        assert await setup.server.relay.handoff_of("view-3") is None
        # The next turn is the bot's, marked so.
        assert await setup.say("view-3", "hello again") == 200
        assert setup.server.bot.seen[-1].text == "hello again"
        assert setup.server.bot.seen[-1].metadata["omnidesk"] == {"with_agent": False}
