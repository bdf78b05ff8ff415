"""The outbox of a customer who pulls (rest): ordered ids, a cursor, acknowledgements, wake-ups.

Both stores, the process's and a real redis-server's, give the same answers:
ids that order as the entries were put, reads after a cursor, an
acknowledgement that takes off everything up to an id, and a wait that a put
ends at once, on the same instance or, through Redis, on another.
"""

import asyncio
from typing import Any, AsyncIterator, Dict, List, Tuple

import pytest

from connectors.omnidesk.channel.outbox import Outbox, OutboxTimings, ToCustomer
from connectors.omnidesk.channel.outbox_store import OutboxStore, entry_order, is_entry_id
from connectors.omnidesk.channel.redis_switchboard import RedisSwitchboard
from connectors.omnidesk.channel.switchboard import InMemorySwitchboard, Switchboard


class Pulling:
    """The rest line as the outbox sees it: the customer pulls, nothing is sent."""

    held_by_socket = False
    pulled = True

    def __init__(self) -> None:
        self.sent: List[Any] = []

    async def send_text(self, recipient_id: str, text: str, agent: Any = None) -> None:
        self.sent.append(text)


@pytest.fixture(params=["memory", "redis"])
async def store(request: Any) -> AsyncIterator[OutboxStore]:
    board: Switchboard = (
        InMemorySwitchboard()
        if request.param == "memory"
        else RedisSwitchboard(request.getfixturevalue("redis_url"), outbox_retention=3600)
    )
    try:
        yield board.outbox_store
    finally:
        await board.close()


def entry(n: Any) -> Dict[str, str]:
    return {"e": f"entry {n}"}


def texts_of(rows: List[Tuple[str, Dict[str, str]]]) -> List[str]:
    return [fields["e"] for _, fields in rows]


async def test_entry_ids_order_as_the_entries_were_put_and_a_cursor_reads_after_them(
    store: OutboxStore,
) -> None:
    ids = [await store.put("conv", entry(n)) for n in range(12)]
    assert all(is_entry_id(entry_id) for entry_id in ids)
    assert sorted(ids, key=entry_order) == ids and len(set(ids)) == 12
    assert texts_of(await store.read_after("conv", ids[9], 50)) == ["entry 10", "entry 11"]
    assert texts_of(await store.read_after("conv", None, 2)) == ["entry 0", "entry 1"]


async def test_an_acknowledgement_takes_off_everything_up_to_its_id_and_nothing_after(
    store: OutboxStore,
) -> None:
    ids = [await store.put("conv", entry(n)) for n in range(5)]
    assert texts_of(await store.acknowledge("conv", ids[2])) == ["entry 0", "entry 1", "entry 2"]
    assert [entry_id for entry_id, _ in await store.read_after("conv", None, 50)] == ids[3:]
    assert await store.acknowledge("conv", ids[2]) == []
    await store.acknowledge("conv", ids[4])
    assert await store.read_after("conv", None, 50) == []
    assert "conv" not in await store.waiting()
    # Ids keep growing after the outbox emptied: a cursor never skips a new entry.
    later = await store.put("conv", entry("after"))
    assert entry_order(later) > entry_order(ids[4])


async def test_the_last_id_handed_out_only_grows(store: OutboxStore) -> None:
    ids = [await store.put("conv", entry(n)) for n in range(3)]
    assert await store.handed("conv") is None
    await store.note_handed("conv", ids[1])
    await store.note_handed("conv", ids[0])
    assert await store.handed("conv") == ids[1]


def outbox_on(store: OutboxStore) -> Outbox:
    return Outbox(store, {"rest": Pulling()}, OutboxTimings(poll_interval=0.05))


async def test_the_drainer_sends_nothing_to_a_customer_who_pulls(store: OutboxStore) -> None:
    outbox = outbox_on(store)
    outbox.start()
    try:
        await outbox.put("conv", "rest", "chat-1", ToCustomer("text", text="Hello"))
        await asyncio.sleep(0.3)
        await outbox.wait_idle(2.0)
        found = await outbox.read("conv", None, "chat-1")
        assert [p.entry.item.text for p in found] == ["Hello"]
        assert outbox._lines["rest"].sent == []  # type: ignore[attr-defined]
    finally:
        await outbox.close()


async def test_a_wait_ends_when_an_entry_is_put_and_reads_only_its_own_chat(
    store: OutboxStore,
) -> None:
    outbox = outbox_on(store)
    outbox.start()
    try:
        waiting = asyncio.ensure_future(outbox.wait("conv", None, "chat-2", timeout=20))
        await asyncio.sleep(0.1)
        await outbox.put("conv", "rest", "chat-1", ToCustomer("text", text="an earlier chat"))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await outbox.put("conv", "rest", "chat-2", ToCustomer("text", text="this chat"))
        found = await asyncio.wait_for(waiting, 5)
        assert [p.entry.item.text for p in found] == ["this chat"]
        assert outbox.pullers_waiting() == 0
    finally:
        await outbox.close()


async def test_a_wait_on_one_instance_ends_when_another_puts(redis_url: str) -> None:
    boards = [RedisSwitchboard(redis_url), RedisSwitchboard(redis_url)]
    here, there = (outbox_on(board.outbox_store) for board in boards)
    here.start()
    there.start()
    try:
        await asyncio.sleep(0.2)  # both listen to the nudges
        waiting = asyncio.ensure_future(here.wait("conv-x", None, "chat-1", timeout=20))
        await asyncio.sleep(0.1)
        await there.put("conv-x", "rest", "chat-1", ToCustomer("text", text="from B"))
        found = await asyncio.wait_for(waiting, 5)
        assert [p.entry.item.text for p in found] == ["from B"]
    finally:
        await here.close()
        await there.close()
        for board in boards:
            await board.close()


async def test_an_answer_takes_what_no_poll_handed_out_and_leaves_out_typing(
    store: OutboxStore,
) -> None:
    outbox = outbox_on(store)
    for text in ("one", "two"):
        await outbox.put("conv", "rest", "chat-1", ToCustomer("text", text=text))
    await outbox.hand_out("conv", await outbox.read("conv", None, "chat-1"))
    await outbox.put("conv", "rest", "chat-1", ToCustomer("typing", typing=True))
    await outbox.put("conv", "rest", "chat-1", ToCustomer("text", text="three"))
    taken = await outbox.take_for_answer("conv")
    assert [p.entry.item.text for p in taken] == ["three"]
    assert await outbox.read("conv", None, "chat-1") == []
    assert await outbox.take_for_answer("conv") == []
    await outbox.close()
