"""The switchboard's contract, for the in-memory and the Redis implementation."""

import asyncio
from typing import AsyncIterator

import pytest

from connectors.omnidesk.channel.redis_switchboard import RedisSwitchboard
from connectors.omnidesk.channel.switchboard import (
    InMemorySwitchboard,
    Switchboard,
    new_handoff,
)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def switchboard(request: pytest.FixtureRequest) -> AsyncIterator[Switchboard]:
    if request.param == "memory":
        yield InMemorySwitchboard()
        return
    board = RedisSwitchboard(request.getfixturevalue("redis_url"))
    try:
        yield board
    finally:
        await board.close()


async def test_a_handoff_is_found_by_conversation_and_by_chat(switchboard: Switchboard) -> None:
    await switchboard.start(new_handoff("conv-1", "rasa-aaaaaaaaaa", "socketio", 2))
    assert (await switchboard.get("conv-1")).chat_session_id == "rasa-aaaaaaaaaa"  # type: ignore[union-attr]
    assert (await switchboard.find_by_chat_session("rasa-aaaaaaaaaa")).conversation_id == "conv-1"  # type: ignore[union-attr]
    assert await switchboard.get("conv-2") is None


async def test_message_numbers_are_taken_once_each_under_concurrency(
    switchboard: Switchboard,
) -> None:
    await switchboard.start(new_handoff("conv-1", "rasa-aaaaaaaaaa", "socketio", 2))

    async def one_turn() -> int:
        # As the relay does: ask for the chat's turn until granted, give it back.
        while True:
            ticket = await switchboard.begin_turn("conv-1", lease_seconds=5)
            assert ticket is not None
            if ticket.message_number is not None:
                assert await switchboard.finish_turn("conv-1", ticket.fence)
                return ticket.message_number
            await switchboard.wait_turn("conv-1", 1.0)

    numbers = await asyncio.gather(*(one_turn() for _ in range(30)))
    assert sorted(numbers) == list(range(2, 32))


async def test_a_chat_ends_once_and_a_stale_end_leaves_a_newer_chat(
    switchboard: Switchboard,
) -> None:
    await switchboard.start(new_handoff("conv-1", "rasa-aaaaaaaaaa", "socketio", 2))
    await switchboard.start(new_handoff("conv-1", "rasa-bbbbbbbbbb", "socketio", 2))
    assert await switchboard.find_by_chat_session("rasa-aaaaaaaaaa") is None
    assert await switchboard.end("conv-1", "rasa-aaaaaaaaaa") is None
    ended = await asyncio.gather(*(switchboard.end("conv-1") for _ in range(5)))
    assert [e.chat_session_id for e in ended if e is not None] == ["rasa-bbbbbbbbbb"]
    assert await switchboard.begin_turn("conv-1", lease_seconds=5) is None
    assert await switchboard.all() == []


async def test_wait_notice_is_claimed_once_and_activity_is_kept(switchboard: Switchboard) -> None:
    await switchboard.start(new_handoff("conv-1", "rasa-aaaaaaaaaa", "socketio", 2, now=100.0))
    claims = await asyncio.gather(*(switchboard.claim_wait_notice("conv-1") for _ in range(5)))
    assert claims.count(True) == 1
    await switchboard.touch("conv-1", agent=True, now=200.0)
    handoff = await switchboard.get("conv-1")
    assert handoff is not None and handoff.agent_replied and handoff.last_activity == 200.0
    await switchboard.touch("conv-9", now=300.0)
    assert await switchboard.get("conv-9") is None


async def test_concurrent_starts_replace_each_chat_exactly_once(switchboard: Switchboard) -> None:
    chats = [f"rasa-{i:010d}" for i in range(12)]
    replaced = await asyncio.gather(
        *(switchboard.start(new_handoff("conv-1", chat, "socketio", 2)) for chat in chats)
    )
    current = await switchboard.get("conv-1")
    assert current is not None
    # Every chat but the one left open was replaced by exactly one other start.
    assert sorted([r.chat_session_id for r in replaced if r] + [current.chat_session_id]) == chats
    found = [await switchboard.find_by_chat_session(chat) for chat in chats]
    assert [h.chat_session_id for h in found if h] == [current.chat_session_id]
    assert [h.conversation_id for h in await switchboard.all()] == ["conv-1"]


async def test_one_turn_holds_a_chat_and_the_next_gets_the_next_number(
    switchboard: Switchboard,
) -> None:
    await switchboard.start(new_handoff("conv-1", "rasa-aaaaaaaaaa", "callback", 2, now=100.0))
    first = await switchboard.begin_turn("conv-1", lease_seconds=5, now=150.0)
    assert first is not None and first.granted
    assert (first.message_number, first.handoff.last_activity) == (2, 150.0)
    busy = await switchboard.begin_turn("conv-1", lease_seconds=5)
    assert busy is not None and not busy.granted
    assert (await switchboard.get("conv-1")).next_message_number == 3  # type: ignore[union-attr]
    assert await switchboard.finish_turn("conv-1", first.fence)
    second = await switchboard.begin_turn("conv-1", lease_seconds=5)
    assert second is not None and second.message_number == 3
    assert second.fence > first.fence
    assert await switchboard.begin_turn("conv-2", lease_seconds=5) is None


async def test_an_expired_lease_is_taken_over_and_its_holder_is_fenced_out(
    switchboard: Switchboard,
) -> None:
    await switchboard.start(new_handoff("conv-1", "rasa-aaaaaaaaaa", "callback", 2))
    stalled = await switchboard.begin_turn("conv-1", lease_seconds=0.1)
    assert stalled is not None and stalled.granted
    await asyncio.sleep(0.15)
    later = await switchboard.begin_turn("conv-1", lease_seconds=5)
    assert later is not None and later.message_number == 3
    assert not await switchboard.finish_turn("conv-1", stalled.fence)
    assert await switchboard.finish_turn("conv-1", later.fence)


async def test_ending_a_chat_frees_its_lease(switchboard: Switchboard) -> None:
    await switchboard.start(new_handoff("conv-1", "rasa-aaaaaaaaaa", "callback", 2))
    held = await switchboard.begin_turn("conv-1", lease_seconds=30)
    assert held is not None
    await switchboard.end("conv-1")
    await switchboard.start(new_handoff("conv-1", "rasa-bbbbbbbbbb", "callback", 2))
    fresh = await switchboard.begin_turn("conv-1", lease_seconds=30)
    assert fresh is not None and fresh.granted and fresh.message_number == 2


@pytest.mark.redis
async def test_one_unreadable_record_hides_no_other_handoff(redis_url: str) -> None:
    board = RedisSwitchboard(redis_url)
    try:
        await board.start(new_handoff("conv-1", "rasa-aaaaaaaaaa", "callback", 2))
        await board.start(new_handoff("conv-2", "rasa-bbbbbbbbbb", "callback", 2))
        await board._redis.hset("omnidesk:handoff:conv-1", "h", "{not json")
        assert [h.conversation_id for h in await board.all()] == ["conv-2"]
    finally:
        await board.close()


async def test_a_handoffs_route_is_kept_through_turns_touches_and_its_end(
    switchboard: Switchboard,
) -> None:
    # Slack's reply goes to the customer's channel and thread: the handoff keeps them.
    route = {"channel": "C0SUPPORT", "thread_ts": "1700000000.000100"}
    await switchboard.start(new_handoff("U0CUSTOMER", "rasa-bbbbbbbbbb", "slack", 2, route=route))
    await switchboard.begin_turn("U0CUSTOMER", 5.0)
    await switchboard.touch("U0CUSTOMER", agent=True, agent_name="Anna", agent_picture=None)

    assert (await switchboard.get("U0CUSTOMER")).route == route  # type: ignore[union-attr]
    found = await switchboard.find_by_chat_session("rasa-bbbbbbbbbb")
    assert found is not None and found.route == route
    ended = await switchboard.end("U0CUSTOMER", "rasa-bbbbbbbbbb")
    assert ended is not None and ended.route == route
