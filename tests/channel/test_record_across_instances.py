"""Relayed turns reach the tracker once each, in order, whichever instance relayed them."""

from pathlib import Path
from typing import Any, List, Tuple

import pytest

from omnidesk_sandbox.testing import Sandbox
from tests.channel.conftest import (
    CallbackSetup,
    callback_on_two_instances,
    callback_setup,
    rasa_agent,
)


def relayed(tracker: Any) -> List[Tuple[str, str]]:
    return [
        (e.metadata["omnidesk"]["role"], e.text)
        for e in tracker.events
        if "omnidesk" in (getattr(e, "metadata", None) or {}) and "role" in e.metadata["omnidesk"]
    ]


@pytest.mark.redis
async def test_turns_relayed_on_two_instances_reach_the_tracker_once_in_order(
    redis_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    agent = rasa_agent()  # one tracker store, as Rasa's SQL store would be
    async with callback_on_two_instances(redis_url, sandbox, str(tmp_path), agent=agent) as (
        customer,
        first,
        second,
    ):
        setup = CallbackSetup(server=first, customer=customer)
        chat = await setup.hand_over("cust-t")
        sandbox.chat(chat).chat_server = sandbox.chat(chat).chat_server.replace(
            first.url, second.url
        )  # Omnidesk's calls land on the other instance
        expected: List[Tuple[str, str]] = []
        for i in range(3):
            assert await setup.say("cust-t", f"question {i}") == 200
            expected.append(("customer", f"question {i}"))
            await sandbox.agent_reply(chat, f"answer {i}", name="Anna")
            await customer.wait_for(lambda r, i=i: f"answer {i}" in [m.get("text") for m in r])
            expected.append(("agent", f"answer {i}"))
        # The first instance's turns wait in Redis: the second can write them.
        assert await second.record.waiting("cust-t") != []
        await second.record.flush_all()
        assert relayed(await agent.tracker_store.retrieve("cust-t")) == expected
        assert await first.record.waiting("cust-t") == []

        assert await setup.say("cust-t", "one more") == 200
        expected.append(("customer", "one more"))
        await sandbox.agent_end(chat)  # lands on the second instance
        await customer.wait_for(
            lambda r: "Back with the bot (ended_by_agent)." in [m.get("text") for m in r]
        )
        assert relayed(await agent.tracker_store.retrieve("cust-t")) == expected


async def test_a_write_retried_after_the_tracker_already_took_it_adds_nothing() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("cust-w")
        assert await setup.say("cust-w", "hello") == 200
        record = setup.server.record
        waiting = await record.waiting("cust-w")
        # A writer that saved the tracker and died before taking the turns off.
        await record._bot.record("cust-w", waiting)
        await record.flush("cust-w")
        store = setup.server.app.ctx.agent.tracker_store
        assert relayed(await store.retrieve("cust-w")) == [("customer", "hello")]
        assert chat


async def test_a_turn_kept_twice_by_a_leave_tried_again_is_written_once() -> None:
    async with callback_setup() as setup:
        await setup.hand_over("cust-twice")
        assert await setup.say("cust-twice", "hello") == 200
        record = setup.server.record
        waiting = await record.waiting("cust-twice")
        # A leave whose answer was lost, tried again after a failover, kept it twice.
        await record._bot.record("cust-twice", waiting + waiting)
        store = setup.server.app.ctx.agent.tracker_store
        assert relayed(await store.retrieve("cust-twice")) == [("customer", "hello")]
