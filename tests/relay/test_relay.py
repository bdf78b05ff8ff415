"""A handoff's life through the Relay, with no server: ordering, ending, outage, notices."""

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, List, Optional

import pytest

from connectors.omnidesk.channel.hookpoints import (
    AgentMessage,
    AgentTyping,
    EndSession,
)
from connectors.omnidesk.channel.notices import DEFAULT_TEXTS
from connectors.omnidesk.channel.outbox import OutboxTimings
from connectors.omnidesk.channel.sides import Undeliverable
from connectors.omnidesk.channel.switchboard import (
    Handoff,
    InMemorySwitchboard,
    NotInRelay,
    Place,
    SwitchboardError,
)
from connectors.omnidesk.handoff import HandoffOutcome, HandoffStarted
from tests.relay.conftest import ANNA, CHANNEL, FakeBot, Sent, relay_harness, wait_until


async def say(h: Any, conversation_id: str, text: Optional[str]) -> bool:
    """A customer turn as the channel hands it over: True when it did not go to the bot."""
    to_bot: List[str] = []

    async def bot() -> str:
        to_bot.append(text or "")
        return "bot"

    async def tell_here(notice: str) -> None:
        h.line.sent.append(Sent("text", conversation_id, notice))

    return await h.relay.turn(conversation_id, text, bot, tell_here) != "bot"


# -- the customer's turns --------------------------------------------------------------


async def test_turns_reach_the_agent_in_the_order_typed_numbered_from_two() -> None:
    async with relay_harness() as h:
        await h.hand_over("c-1")
        for text in ("one", "two", "three"):
            assert await say(h, "c-1", text)
        assert h.desk.messages() == ["one", "two", "three"]
        assert h.desk.numbers() == ["2", "3", "4"]


async def test_a_turn_of_a_conversation_with_the_bot_is_not_relayed() -> None:
    async with relay_harness() as h:
        assert not await say(h, "c-bot", "hello")
        assert h.desk.calls == []


async def test_turns_sent_at_once_reach_the_agent_once_each_in_the_order_typed() -> None:
    async with relay_harness() as h:
        await h.hand_over("c-2")
        h.desk.answer("notifyUserNewChatMessage", (200, 0.2))  # the first one is slow
        texts = [f"m{i}" for i in range(5)]
        await asyncio.gather(*(say(h, "c-2", t) for t in texts))
        assert h.desk.messages() == texts
        assert h.desk.numbers() == ["2", "3", "4", "5", "6"]


async def test_a_turn_omnidesk_refuses_tells_the_customer_in_the_domains_words() -> None:
    bot = FakeBot(responses={"utter_omnidesk_delivery_failed": "Not delivered (domain)."})
    async with relay_harness(bot=bot) as h:
        await h.hand_over("c-3")
        h.desk.answer("notifyUserNewChatMessage", (400, 0.0))
        assert await say(h, "c-3", "lost?")
        await h.settle()
        assert h.line.texts("c-3") == ["Not delivered (domain)."]
        await h.relay.end(await h.relay.with_agent("c-3"), HandoffOutcome.ENDED_BY_AGENT)
        [entry] = [e for e in bot.records["c-3"] if e.role == "customer"]
        assert entry.text == "lost?" and not entry.delivered


async def test_the_leave_command_ends_the_chat_and_tells_omnidesk() -> None:
    async with relay_harness() as h:
        handoff = await h.hand_over("c-4")
        assert await say(h, "c-4", " /leave_human_chat ")
        assert await h.relay.handoff_of("c-4") is None
        [end] = h.desk.named("notifyUserEndChat")
        assert end.fields["chatSessionID"] == handoff.chat_session_id
        assert h.bot.handed_back == [("c-4", HandoffOutcome.ENDED_BY_CUSTOMER)]
        assert h.desk.messages() == []  # the command itself is not relayed


async def test_an_empty_turn_takes_no_number() -> None:
    async with relay_harness() as h:
        await h.hand_over("c-5")
        assert await say(h, "c-5", "   ")
        assert await say(h, "c-5", "real")
        assert h.desk.numbers() == ["2"]


# -- the agent's side and the end -----------------------------------------------------------


async def test_agent_messages_reach_the_customer_in_order_then_the_end_notice() -> None:
    async with relay_harness() as h:
        handoff = await h.hand_over("c-6")
        chat = handoff.chat_session_id
        for text in ("Hello", "Let me check", "Done"):
            await h.relay.agent_message(AgentMessage(chat, text, ANNA))
        await h.relay.agent_typing(AgentTyping(chat, True))
        await h.relay.agent_end(EndSession(chat))
        await h.settle()
        assert h.line.texts("c-6") == [
            "Hello",
            "Let me check",
            "Done",
            DEFAULT_TEXTS["utter_omnidesk_chat_ended"],
        ]
        assert [s.agent for s in h.line.sent if s.kind == "text"][:3] == [ANNA] * 3
        assert h.desk.named("notifyUserEndChat") == []  # the agent ended it: Omnidesk knows
        assert await h.relay.handoff_of("c-6") is None


async def test_the_bot_says_the_end_itself_when_its_domain_has_the_intent() -> None:
    async with relay_harness(bot=FakeBot(knows_end_intent=True)) as h:
        handoff = await h.hand_over("c-7")
        await h.relay.agent_message(AgentMessage(handoff.chat_session_id, "Bye", ANNA))
        await h.relay.agent_end(EndSession(handoff.chat_session_id))
        await h.settle()
        assert h.line.texts("c-7") == ["Bye", "bot: back (ended_by_agent)"]


async def test_a_chat_ends_once_whoever_ends_it() -> None:
    async with relay_harness() as h:
        handoff = await h.hand_over("c-8")
        ends = await asyncio.gather(
            h.relay.end(handoff, HandoffOutcome.TIMED_OUT),
            h.relay.end(handoff, HandoffOutcome.ENDED_BY_CUSTOMER),
        )
        assert sorted(ends) == [False, True]
        assert len(h.bot.handed_back) == 1
        assert len(h.desk.named("notifyUserEndChat")) == 1


async def test_an_agent_event_for_a_chat_not_open_is_refused() -> None:
    async with relay_harness() as h:
        with pytest.raises(NotInRelay):
            await h.relay.agent_message(AgentMessage("rasa-0000000000000000", "hi", ANNA))


async def test_relayed_turns_reach_the_tracker_before_the_bot_takes_over() -> None:
    async with relay_harness(bot=FakeBot(knows_end_intent=True)) as h:
        handoff = await h.hand_over("c-9")
        await say(h, "c-9", "question")
        await h.relay.agent_message(AgentMessage(handoff.chat_session_id, "answer", ANNA))
        assert h.bot.records["c-9"] == []  # paced, not on the hot path
        await h.relay.end(handoff, HandoffOutcome.ENDED_BY_AGENT)
        assert [(e.role, e.text) for e in h.bot.records["c-9"]] == [
            ("customer", "question"),
            ("agent", "answer"),
        ]


async def test_the_customer_is_handed_its_token_through_the_outbox() -> None:
    async with relay_harness() as h:
        handoff = await h.hand_over("c-10")
        await h.settle()
        [details] = [s.value for s in h.line.sent if s.kind == "details"]
        assert details["customer_token"] == h.relay._settings.customer_token(
            handoff.chat_session_id
        )
        assert await h.relay.check_customer("c-10", details["customer_token"]) == handoff
        for wrong in (None, "", "0" * 40):
            with pytest.raises(NotInRelay):
                await h.relay.check_customer("c-10", wrong)


async def test_a_message_the_channel_refuses_waits_and_is_delivered_later() -> None:
    async with relay_harness() as h:
        handoff = await h.hand_over("c-11")
        await h.settle()
        h.line.refusing = True
        await h.relay.agent_message(AgentMessage(handoff.chat_session_id, "kept", ANNA))
        await asyncio.sleep(0.1)
        assert h.line.texts("c-11") == []
        h.line.refusing = False
        await wait_until(lambda: h.line.texts("c-11") == ["kept"])


# -- a handoff the switchboard cannot take, and a switchboard outage -----------------------


class FlakySwitchboard(InMemorySwitchboard):
    """The in-memory switchboard, with an outage a test switches on and off."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise SwitchboardError("switchboard read failed: ConnectionError: Redis is down")

    async def start(self, handoff: Handoff) -> Optional[Handoff]:
        self._check()
        return await super().start(handoff)

    async def get(self, conversation_id: str) -> Optional[Handoff]:
        self._check()
        return await super().get(conversation_id)

    @asynccontextmanager
    async def in_line(
        self, conversation_id: str, numbered: bool, wait: float
    ) -> AsyncIterator[Place]:
        self._check()
        async with super().in_line(conversation_id, numbered, wait) as place:
            yield place


async def test_a_handoff_the_switchboard_cannot_take_ends_the_chat_and_tells_the_customer() -> None:
    board = FlakySwitchboard()
    async with relay_harness(switchboard=board) as h:
        board.down = True
        assert not await h.relay.start("c-12", CHANNEL, HandoffStarted("rasa-c12c12c12c12", 2))
        assert [c.fields["chatSessionID"] for c in h.desk.named("notifyUserEndChat")] == [
            "rasa-c12c12c12c12"
        ]
        await h.settle()
        assert h.line.texts("c-12") == [DEFAULT_TEXTS["utter_omnidesk_handoff_failed"]]


async def test_a_turn_during_an_outage_is_kept_and_relayed_when_the_switchboard_is_back() -> None:
    board = FlakySwitchboard()
    async with relay_harness(switchboard=board) as h:
        await h.hand_over("c-13")
        board.down = True
        turn = asyncio.ensure_future(say(h, "c-13", "still there?"))
        await wait_until(lambda: h.line.texts("c-13") == [DEFAULT_TEXTS["utter_omnidesk_delayed"]])
        board.down = False
        assert await asyncio.wait_for(turn, 3)
        assert h.desk.messages() == ["still there?"]


async def test_during_an_outage_a_conversation_never_seen_with_an_agent_goes_to_the_bot() -> None:
    board = FlakySwitchboard()
    async with relay_harness(switchboard=board) as h:
        board.down = True
        assert not await say(h, "c-14", "hello")
        assert h.line.sent == []


async def test_a_turn_kept_past_the_outage_hold_is_told_as_not_delivered() -> None:
    board = FlakySwitchboard()
    async with relay_harness(switchboard=board, outage_hold=0.3) as h:
        await h.hand_over("c-15")
        board.down = True
        assert await say(h, "c-15", "lost")
        board.down = False
        await h.settle()
        texts: List[str] = h.line.texts("c-15")
        assert texts == [
            DEFAULT_TEXTS["utter_omnidesk_delayed"],
            DEFAULT_TEXTS["utter_omnidesk_delivery_failed"],
        ]
        assert h.desk.messages() == []


async def test_a_notice_reaches_the_customer_even_when_the_outbox_cannot_store_it() -> None:
    async with relay_harness(timings=OutboxTimings(poll_interval=0.05)) as h:
        handoff = await h.hand_over("c-16")
        await h.settle()

        async def broken_put(conversation_id: str, raw: str) -> str:
            raise SwitchboardError("outbox put failed: ConnectionError: Redis is down")

        h.store.put = broken_put  # type: ignore[method-assign]
        h.desk.answer("notifyUserNewChatMessage", (400, 0.0))
        assert await say(h, "c-16", "hello")
        assert h.line.texts("c-16") == [DEFAULT_TEXTS["utter_omnidesk_delivery_failed"]]
        assert handoff.conversation_id == "c-16"


async def test_a_message_the_channel_refuses_for_good_is_dropped_and_the_agent_told() -> None:
    async with relay_harness() as h:
        handoff = await h.hand_over("c-17")
        await h.settle()

        async def window_closed(recipient_id: str, text: str, agent: Any = None) -> None:
            raise Undeliverable("outside the 24-hour window")

        h.line.send_text = window_closed  # type: ignore[method-assign]
        await h.relay.agent_message(AgentMessage(handoff.chat_session_id, "late reply", ANNA))
        await wait_until(lambda: bool(h.desk.messages()))
        [note] = h.desk.messages()
        assert "Not delivered to the customer" in note and "24-hour window" in note
        assert h.desk.numbers() == [None]  # the connector's note takes no customer number
        assert await h.store.peek("c-17", 5) == []


async def test_the_bots_words_wait_behind_the_agents_last_message_for_a_channel_that_is_down() -> (
    None
):
    async with relay_harness(bot=FakeBot(knows_end_intent=True)) as h:
        handoff = await h.hand_over("c-18")
        await h.settle()
        h.line.refusing = True
        await h.relay.agent_message(AgentMessage(handoff.chat_session_id, "Last words", ANNA))
        await h.relay.agent_end(EndSession(handoff.chat_session_id))
        await asyncio.sleep(0.2)
        assert h.line.texts("c-18") == []
        h.line.refusing = False
        await wait_until(
            lambda: h.line.texts("c-18") == ["Last words", "bot: back (ended_by_agent)"]
        )


# -- one line per conversation ---------------------------------------------------------


async def test_turns_typed_during_a_slow_escalation_reach_the_agent_in_order() -> None:
    async with relay_harness() as h:
        escalated = asyncio.Event()

        async def escalating_bot() -> str:
            # The bot's turn runs the action (slow), and the handoff registers at its end.
            await asyncio.sleep(0.3)
            await h.hand_over("c-20")
            escalated.set()
            return "bot"

        async def nothing(_: str) -> None:
            return None

        escalation = asyncio.ensure_future(
            h.relay.turn("c-20", "a person please", escalating_bot, nothing)
        )
        await asyncio.sleep(0.01)
        typed = [f"while waiting {i}" for i in range(6)]
        turns = []
        for text in typed:
            turns.append(asyncio.ensure_future(say(h, "c-20", text)))
            await asyncio.sleep(0.02)
        assert await asyncio.gather(*turns) == [True] * 6
        await escalation
        assert escalated.is_set()
        assert h.desk.messages() == typed
        assert h.desk.numbers() == ["2", "3", "4", "5", "6", "7"]


async def test_the_leave_command_waits_for_the_turn_before_it() -> None:
    async with relay_harness(max_attempts=3) as h:
        await h.hand_over("c-21")
        # "bye" meets a 503 and is retried; the leave command follows 50 ms later.
        h.desk.answer("notifyUserNewChatMessage", (503, 0.1), (200, 0.1))
        bye = asyncio.ensure_future(say(h, "c-21", "bye"))
        await asyncio.sleep(0.05)
        assert await say(h, "c-21", "/leave_human_chat")
        await bye
        names = [c.name for c in h.desk.calls]
        assert names.index("notifyUserEndChat") > max(
            i for i, n in enumerate(names) if n == "notifyUserNewChatMessage"
        )
        await h.settle()
        assert DEFAULT_TEXTS["utter_omnidesk_delivery_failed"] not in h.line.texts("c-21")


async def test_a_turn_whose_caller_went_away_is_still_relayed() -> None:
    async with relay_harness() as h:
        await h.hand_over("c-22")
        h.desk.answer("notifyUserNewChatMessage", (200, 0.3))
        caller = asyncio.ensure_future(say(h, "c-22", "are you there?"))
        await asyncio.sleep(0.05)
        caller.cancel()  # the HTTP client gave up
        with pytest.raises(asyncio.CancelledError):
            await caller
        await wait_until(lambda: h.desk.messages() == ["are you there?"])
        await h.settle()
        assert h.line.texts("c-22") == []  # no "did not reach": it did


async def test_a_turn_stuck_behind_the_one_before_is_told_after_turn_wait() -> None:
    async with relay_harness(turn_wait=0.3) as h:
        told: List[str] = []

        async def stuck_bot() -> str:
            await asyncio.sleep(1.0)
            return "bot"

        async def tell(text: str) -> None:
            told.append(text)

        stuck = asyncio.ensure_future(h.relay.turn("c-23", "first", stuck_bot, tell))
        await asyncio.sleep(0.01)
        assert await h.relay.turn("c-23", "second", stuck_bot, tell) is None
        assert told == [DEFAULT_TEXTS["utter_omnidesk_turn_not_handled"]]
        await stuck


async def test_an_end_omnidesk_did_not_hear_is_told_again_by_the_sweep() -> None:
    async with relay_harness() as h:
        handoff = await h.hand_over("c-24")
        h.desk.unreachable = True
        assert await say(h, "c-24", "/leave_human_chat")
        # The customer is back with the bot at once.
        assert await h.relay.handoff_of("c-24") is None
        [ending] = await h.relay.open_handoffs()
        assert ending.chat_session_id == handoff.chat_session_id and ending.ending
        h.desk.unreachable = False
        await h.relay.retry_end(ending)
        [told] = h.desk.named("notifyUserEndChat")
        assert told.fields["chatSessionID"] == handoff.chat_session_id
        assert await h.relay.open_handoffs() == []


async def test_an_end_omnidesk_never_hears_is_given_up_after_a_day() -> None:
    async with relay_harness() as h:
        await h.hand_over("c-25")
        h.desk.unreachable = True
        await say(h, "c-25", "/leave_human_chat")
        [ending] = await h.relay.open_handoffs()
        assert ending.ended_at is not None
        await h.relay.retry_end(ending, now=ending.ended_at + 86401)
        assert await h.relay.open_handoffs() == []


async def test_a_customer_who_pulls_reads_an_ending_chat_as_open_until_its_end_is_put() -> None:
    """A poll that lands between the handoff's end and the end's entry waits for the end.

    Answering "the chat is over and you have all of it" there would stop the
    client before the end of the chat reached it.
    """
    bot = FakeBot()
    handing_back = asyncio.Event()
    carry_on = asyncio.Event()
    hand_back = bot.hand_back

    async def slow_hand_back(handoff: Handoff, outcome: HandoffOutcome) -> bool:
        handing_back.set()
        await carry_on.wait()
        return await hand_back(handoff, outcome)

    bot.hand_back = slow_hand_back  # type: ignore[method-assign]
    async with relay_harness(bot=bot) as h:
        h.line.pulled = True  # type: ignore[attr-defined]
        handoff = await h.hand_over("c-pull")
        chat = handoff.chat_session_id
        token = h.relay._settings.customer_token(chat)
        await h.relay.agent_message(AgentMessage(chat, "Last words", ANNA))
        await h.relay.agent_end(EndSession(chat))
        await asyncio.wait_for(handing_back.wait(), 3)
        assert await h.relay.handoff_of("c-pull") is None
        ending = await h.relay.reader("c-pull", token)
        assert ending.open and ending.chat_session_id == chat
        carry_on.set()
        await h.settle()
        await wait_until(lambda: not h.relay._ends)
        ended = await h.relay.reader("c-pull", token)
        assert not ended.open
