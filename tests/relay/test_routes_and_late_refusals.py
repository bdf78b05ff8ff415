"""Where a channel replies (the handoff's route), and refusals the agent hears of, with no server."""

from typing import Any, List, Mapping, Optional

from connectors.omnidesk.channel.hookpoints import AgentMessage, EndSession
from connectors.omnidesk.channel.sides import Undeliverable
from connectors.omnidesk.handoff import HandoffStarted, new_chat_session_id
from tests.relay.conftest import ANNA, CHANNEL, relay_harness, wait_until

THREAD = {"channel": "C0SUPPORT", "thread_ts": "1700000000.000100"}


async def test_every_message_of_a_handoff_goes_along_its_route_even_after_it_ended() -> None:
    async with relay_harness() as h:
        routes: List[Optional[Mapping[str, str]]] = []

        def along(route: Optional[Mapping[str, str]]) -> Any:
            routes.append(route)
            return h.line

        h.line.along = along  # type: ignore[attr-defined]  # a line that needs routes
        chat = new_chat_session_id()
        assert await h.relay.start("U0CUSTOMER", CHANNEL, HandoffStarted(chat, 2), THREAD)
        await h.relay.agent_message(AgentMessage(chat, "Hello", ANNA))
        await h.relay.agent_end(EndSession(chat))
        # The end notice goes out after the handoff is gone, still along the route.
        await wait_until(lambda: len(h.line.texts("U0CUSTOMER")) == 2)
        assert h.line.texts("U0CUSTOMER")[0] == "Hello"
        assert routes and all(route == THREAD for route in routes), routes
        assert len(routes) == 3  # the handoff's details, the agent's message, the end notice


async def test_a_message_the_channel_reports_undelivered_later_is_told_to_the_agent() -> None:
    async with relay_harness() as h:
        handoff = await h.hand_over("whatsapp:+15551234567")
        await h.relay.agent_message_failed_later(
            "whatsapp:+15551234567", "message", "Twilio error 63016: outside the window"
        )
        [note] = h.desk.messages()
        assert note.startswith("[Not delivered to the customer: your last message.")
        assert "63016" in note and h.desk.numbers() == [None]
        assert h.desk.named("notifyUserNewChatMessage")[0].fields["chatSessionID"] == (
            handoff.chat_session_id
        )


async def test_a_late_report_for_a_chat_that_has_ended_tells_no_one_and_raises_nothing() -> None:
    async with relay_harness() as h:
        await h.relay.agent_message_failed_later("+15550000000", "file", "Twilio error 30003")
        assert h.desk.calls == []


async def test_a_notice_the_channel_refuses_for_good_is_not_the_agents_to_hear() -> None:
    async with relay_harness() as h:
        handoff = await h.hand_over("c-21")
        await h.settle()

        async def blocked(recipient_id: str, text: str, agent: Any = None) -> None:
            raise Undeliverable("the customer blocked the bot")

        h.line.send_text = blocked  # type: ignore[method-assign]
        await h.relay.remind_unanswered(handoff)  # the connector's "no one picked up yet"
        await h.settle()
        assert h.desk.messages() == []
        assert await h.store.peek("c-21", 5) == []
