"""A turn typed while the escalation runs is routed once it is done: never lost to the bot."""

import asyncio
from typing import Any

from rasa.core.lock_store import InMemoryLockStore

from tests.channel.conftest import callback_setup, rasa_agent


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
    """Rasa's in-memory lock store, counting every read and write made of it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def get_lock(self, conversation_id: str) -> Any:
        self.calls += 1
        return super().get_lock(conversation_id)

    def save_lock(self, lock: Any) -> None:
        self.calls += 1
        super().save_lock(lock)


async def test_a_turn_waiting_in_line_costs_rasas_lock_store_nothing() -> None:
    # Rasa's Redis lock store is synchronous: a wait that polled it would block the
    # whole process while Redis hangs. A turn waits in the connector's own line.
    agent = rasa_agent()
    agent.lock_store = WatchedLockStore()
    async with callback_setup(agent=agent) as setup:
        started = await setup.server.open_chat()
        setup.server.escalate_on("escalate slow-3", started)
        setup.server.bot.lock_store = agent.lock_store
        setup.server.bot.delays["escalate slow-3"] = 1.0
        escalating = asyncio.ensure_future(setup.say("slow-3", "escalate slow-3"))
        await asyncio.sleep(0.3)
        waiting = asyncio.ensure_future(setup.say("slow-3", "typed while connecting"))
        await asyncio.sleep(0.1)
        calls_before = agent.lock_store.calls
        await asyncio.sleep(0.5)
        assert agent.lock_store.calls == calls_before
        assert await escalating == 200 and await waiting == 200
        texts = [m.text for m in setup.server.sandbox.chat(started.chat_session_id).messages]
        assert texts[-1] == "typed while connecting"
