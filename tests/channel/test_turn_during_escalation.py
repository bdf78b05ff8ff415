"""A turn typed while the escalation runs is routed once it is done: never lost to the bot."""

import asyncio
from types import SimpleNamespace
from typing import Any

from rasa.core.lock_store import InMemoryLockStore

from connectors.omnidesk.channel.incoming import wait_for_turns_before
from tests.channel.conftest import callback_setup


async def test_a_turn_typed_during_a_slow_escalation_reaches_the_agent() -> None:
    async with callback_setup() as setup:
        started = await setup.server.open_chat()
        setup.server.escalate_on("escalate slow-1", started)
        setup.server.bot.delays["escalate slow-1"] = 1.0  # the action's Omnidesk calls
        escalating = asyncio.ensure_future(setup.say("slow-1", "escalate slow-1"))
        await asyncio.sleep(0.3)
        assert await setup.say("slow-1", "typed while connecting") == 200
        assert await escalating == 200
        texts = [m.text for m in setup.server.sandbox.chat(started.chat_session_id).messages]
        assert texts[-1] == "typed while connecting"
        assert [m.text for m in setup.server.bot.seen] == ["escalate slow-1"]


async def test_a_turn_typed_during_a_failed_escalation_goes_to_the_bot() -> None:
    async with callback_setup() as setup:
        setup.server.bot.replies["escalate slow-2"] = [{"text": "No one is available."}]
        setup.server.bot.delays["escalate slow-2"] = 1.0
        escalating = asyncio.ensure_future(setup.say("slow-2", "escalate slow-2"))
        await asyncio.sleep(0.3)
        assert await setup.say("slow-2", "typed while connecting") == 200
        assert await escalating == 200
        assert [m.text for m in setup.server.bot.seen] == [
            "escalate slow-2",
            "typed while connecting",
        ]
        # Rasa Pro's callback channel posts from a queue: wait for the posts.
        expected = ["No one is available.", "bot: typed while connecting"]
        await setup.customer.wait_for(lambda _: len(setup.customer.texts()) >= len(expected))
        assert setup.customer.texts() == expected


class WatchedLockStore(InMemoryLockStore):  # type: ignore[misc]
    """Rasa's in-memory lock store, counting the writes made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def save_lock(self, lock: Any) -> None:
        self.writes += 1
        super().save_lock(lock)

    def delete_lock(self, conversation_id: str) -> None:
        self.writes += 1
        super().delete_lock(conversation_id)


async def test_the_wait_reads_rasas_lock_and_never_writes_it() -> None:
    # Rasa's lock stores rewrite a lock whole: a second writer on another replica can
    # lose a ticket or bring back a served one, and a turn then waits 60 s for it.
    store = WatchedLockStore()
    app = SimpleNamespace(ctx=SimpleNamespace(agent=SimpleNamespace(lock_store=store)))
    escalating = store.issue_ticket("c-1", 60)
    writes_before = store.writes

    waiting = asyncio.ensure_future(wait_for_turns_before(app, "c-1"))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # the escalation still holds the lock
    assert store.writes == writes_before

    store.cleanup("c-1", escalating)  # the escalation's turn lets go
    writes_before = store.writes
    await asyncio.wait_for(waiting, timeout=2)
    assert store.writes == writes_before
    # No lock at all: the turn goes on at once, and nothing is written either.
    await asyncio.wait_for(wait_for_turns_before(app, "c-2"), timeout=0.5)
    assert store.get_lock("c-2") is None
