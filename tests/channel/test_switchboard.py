"""The switchboard's contract, for the in-memory and the Redis implementation."""

import asyncio
from typing import AsyncIterator, List, Optional

import pytest
from redis.crc import key_slot

from connectors.omnidesk.channel.redis_switchboard import RedisSwitchboard
from connectors.omnidesk.channel.switchboard import (
    InMemorySwitchboard,
    LocalLine,
    Place,
    Switchboard,
    new_handoff,
)
from connectors.omnidesk.handoff import new_chat_session_id


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


async def served(
    board: Switchboard,
    line: LocalLine,
    conversation_id: str,
    numbered: bool = True,
    hold: float = 0.0,
    wait: float = 5.0,
    keep: Optional[str] = None,
) -> Place:
    """A turn as the relay serves it: first in this process's line, then across instances."""
    async with line.place(conversation_id, wait) as first:
        assert first
        async with board.in_line(conversation_id, numbered, wait) as place:
            if hold:
                await asyncio.sleep(hold)
            if keep is not None:
                place.kept.append(keep)
            return place


async def test_a_handoff_is_found_by_conversation_and_by_chat(switchboard: Switchboard) -> None:
    chat = new_chat_session_id("conv-1")
    await switchboard.start(new_handoff("conv-1", chat, "socketio", 2))
    assert (await switchboard.get("conv-1")).chat_session_id == chat  # type: ignore[union-attr]
    assert (await switchboard.find_by_chat_session(chat)).conversation_id == "conv-1"  # type: ignore[union-attr]
    assert await switchboard.get("conv-2") is None


async def test_turns_are_served_in_the_order_they_arrived_with_their_numbers(
    switchboard: Switchboard,
) -> None:
    await switchboard.start(new_handoff("conv-1", "rasa-aaaaaaaaaa", "socketio", 2))
    line = LocalLine()
    served_in: List[int] = []

    async def turn(index: int) -> int:
        place = await served(switchboard, line, "conv-1", hold=0.002 * (index % 3))
        served_in.append(index)
        assert place.first and place.handoff is not None and place.message_number is not None
        return place.message_number

    numbers = await asyncio.gather(*(turn(i) for i in range(30)))
    assert served_in == list(range(30))
    assert numbers == list(range(2, 32))


async def test_a_turn_of_a_conversation_with_the_bot_is_served_without_a_number(
    switchboard: Switchboard,
) -> None:
    place = await served(switchboard, LocalLine(), "conv-bot")
    assert place.first and place.handoff is None and place.message_number is None


async def test_a_turn_that_waits_too_long_is_not_served(switchboard: Switchboard) -> None:
    line = LocalLine()
    holder = asyncio.ensure_future(served(switchboard, line, "conv-1", hold=0.5))
    await asyncio.sleep(0.05)
    async with line.place("conv-1", 0.1) as first:
        assert not first
    await holder
    assert line.waiting("conv-1") == 0 and len(line) == 0


async def test_a_chat_ends_once_and_a_stale_end_leaves_a_newer_chat(
    switchboard: Switchboard,
) -> None:
    await switchboard.start(new_handoff("conv-1", "rasa-aaaaaaaaaa", "socketio", 2))
    await switchboard.start(new_handoff("conv-1", "rasa-bbbbbbbbbb", "socketio", 2))
    assert await switchboard.find_by_chat_session("rasa-aaaaaaaaaa") is None
    assert await switchboard.end("conv-1", "rasa-aaaaaaaaaa") is None
    ended = await asyncio.gather(*(switchboard.end("conv-1") for _ in range(5)))
    assert [e.chat_session_id for e in ended if e is not None] == ["rasa-bbbbbbbbbb"]
    place = await served(switchboard, LocalLine(), "conv-1")
    assert place.handoff is None
    assert await switchboard.all() == []


async def test_an_end_omnidesk_has_not_heard_of_stays_until_it_has(
    switchboard: Switchboard,
) -> None:
    await switchboard.start(new_handoff("conv-1", "rasa-aaaaaaaaaa", "callback", 2))
    ended = await switchboard.end("conv-1", "rasa-aaaaaaaaaa", tell_omnidesk="ended_by_customer")
    assert ended is not None
    # It routes nothing: the customer's next turn goes to the bot, the agent's reply is refused.
    assert await switchboard.get("conv-1") is None
    assert await switchboard.find_by_chat_session("rasa-aaaaaaaaaa") is None
    assert (await served(switchboard, LocalLine(), "conv-1")).handoff is None
    assert await switchboard.end("conv-1") is None
    [ending] = await switchboard.all()
    assert (ending.chat_session_id, ending.ending) == ("rasa-aaaaaaaaaa", "ended_by_customer")
    assert ending.ended_at is not None
    await switchboard.told_omnidesk("conv-1", "rasa-aaaaaaaaaa")
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
    chats = [new_chat_session_id("conv-1") for _ in range(12)]
    replaced = await asyncio.gather(
        *(switchboard.start(new_handoff("conv-1", chat, "socketio", 2)) for chat in chats)
    )
    current = await switchboard.get("conv-1")
    assert current is not None
    # Every chat but the one left open was replaced by exactly one other start.
    assert sorted([r.chat_session_id for r in replaced if r] + [current.chat_session_id]) == sorted(
        chats
    )
    found = [await switchboard.find_by_chat_session(chat) for chat in chats]
    assert [h.chat_session_id for h in found if h] == [current.chat_session_id]
    assert [h.conversation_id for h in await switchboard.all()] == ["conv-1"]


async def test_relayed_turns_are_kept_for_the_tracker_as_their_place_is_left(
    switchboard: Switchboard,
) -> None:
    await switchboard.start(new_handoff("conv-1", "rasa-aaaaaaaaaa", "socketio", 2))
    line = LocalLine()
    await served(switchboard, line, "conv-1", keep='{"n": 1}')
    await served(switchboard, line, "conv-1", keep='{"n": 2}')
    assert await switchboard.records.peek("conv-1") == ['{"n": 1}', '{"n": 2}']
    assert await switchboard.records.due(None) == ["conv-1"]


# -- several instances -------------------------------------------------------------------


@pytest.mark.redis
async def test_turns_arriving_on_two_instances_are_served_in_arrival_order(redis_url: str) -> None:
    first_board, second_board = RedisSwitchboard(redis_url), RedisSwitchboard(redis_url)
    try:
        await first_board.start(new_handoff("conv-2i", "rasa-cccccccccc", "callback", 2))
        lines = (LocalLine(), LocalLine())
        boards = (first_board, second_board)
        order: List[int] = []

        async def turn(index: int) -> Optional[int]:
            place = await served(boards[index % 2], lines[index % 2], "conv-2i", hold=0.02)
            order.append(index)
            return place.message_number

        line_key = first_board.keys.of("conv-2i", "line")
        tasks = []
        for index in range(12):
            tasks.append(asyncio.ensure_future(turn(index)))
            # Each reaches Redis (served, or standing in its line) before the next
            # is typed, alternating instances: that is the order the line keeps.
            reached = len(order) + await first_board.redis.llen(line_key)
            while reached <= index and not tasks[-1].done():
                await asyncio.sleep(0.001)
                reached = len(order) + await first_board.redis.llen(line_key)
        numbers = await asyncio.gather(*tasks)
        assert order == list(range(12))
        assert numbers == list(range(2, 14))
    finally:
        await first_board.close()
        await second_board.close()


@pytest.mark.redis
async def test_a_place_whose_instance_died_holds_the_line_only_for_its_lease(
    redis_url: str,
) -> None:
    alive = RedisSwitchboard(redis_url, line_lease=0.6)
    dead = RedisSwitchboard(redis_url, line_lease=0.6)
    try:
        await alive.start(new_handoff("conv-dead", "rasa-dddddddddd", "callback", 2))
        # An instance takes a place and dies while holding it: no leave, no renewal.
        stuck = Place("conv-dead", first=False)
        await dead._take(stuck, dead._arrive, True)
        assert stuck.first and stuck.message_number == 2
        dead._wakes.leave("conv-dead")
        started = asyncio.get_running_loop().time()
        place = await served(alive, LocalLine(), "conv-dead", wait=5.0)
        waited = asyncio.get_running_loop().time() - started
        assert place.first and place.message_number == 3
        assert 0.3 < waited < 3.0
    finally:
        await alive.close()
        await dead.close()


@pytest.mark.redis
async def test_a_place_asked_again_after_a_lost_reply_is_one_place_with_one_number(
    redis_url: str,
) -> None:
    board = RedisSwitchboard(redis_url)
    try:
        await board.start(new_handoff("conv-lost", "rasa-eeeeeeeeee", "callback", 2))
        place = Place("conv-lost", first=False)
        await board._take(place, board._arrive, True)
        # The reply was lost: the relay asks again with the same ticket.
        again = Place("conv-lost", first=False, ticket=place.ticket)
        await board._take(again, board._check, True)
        assert (place.message_number, again.message_number) == (2, 2)
        assert await board.redis.llen(board.keys.of("conv-lost", "line")) == 1
        await board._give_up(again)
        assert not await board.redis.exists(board.keys.of("conv-lost", "line"))
        assert (await served(board, LocalLine(), "conv-lost")).message_number == 3
    finally:
        await board.close()


@pytest.mark.redis
async def test_every_key_of_a_conversation_and_its_chat_share_one_hash_slot(redis_url: str) -> None:
    board = RedisSwitchboard(redis_url)
    try:
        chat = new_chat_session_id("conv-slot")
        await board.start(new_handoff("conv-slot", chat, "callback", 2))
        await served(board, LocalLine(), "conv-slot", keep="{}")
        keys = [k async for k in board.redis.scan_iter(match="omnidesk:*")]
        tagged = [k for k in keys if "conv-slot" in k or chat in k]
        slots = {key_slot(k.encode()) for k in tagged}
        assert len(tagged) >= 3 and len(slots) == 1
    finally:
        await board.close()


@pytest.mark.redis
async def test_one_unreadable_record_hides_no_other_handoff(redis_url: str) -> None:
    board = RedisSwitchboard(redis_url)
    try:
        await board.start(new_handoff("conv-1", "rasa-aaaaaaaaaa", "callback", 2))
        await board.start(new_handoff("conv-2", "rasa-bbbbbbbbbb", "callback", 2))
        await board.redis.hset(board.keys.handoff("conv-1"), "h", "{not json")
        assert [h.conversation_id for h in await board.all()] == ["conv-2"]
    finally:
        await board.close()


async def test_a_handoffs_route_is_kept_through_turns_touches_and_its_end(
    switchboard: Switchboard,
) -> None:
    # Slack's reply goes to the customer's channel and thread: the handoff keeps them.
    route = {"channel": "C0SUPPORT", "thread_ts": "1700000000.000100"}
    await switchboard.start(new_handoff("U0CUSTOMER", "rasa-bbbbbbbbbb", "slack", 2, route=route))
    place = await served(switchboard, LocalLine(), "U0CUSTOMER")
    assert place.handoff is not None and place.handoff.route == route
    await switchboard.touch("U0CUSTOMER", agent=True, agent_name="Anna", agent_picture=None)

    assert (await switchboard.get("U0CUSTOMER")).route == route  # type: ignore[union-attr]
    found = await switchboard.find_by_chat_session("rasa-bbbbbbbbbb")
    assert found is not None and found.route == route
    ended = await switchboard.end("U0CUSTOMER", "rasa-bbbbbbbbbb")
    assert ended is not None and ended.route == route
