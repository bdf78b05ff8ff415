"""Two channel servers, one Redis: a customer's turns reach the agent in order.

A callback backend spread over replicas posts one customer's turns to either
instance at the same moment; the chat's turn lease in Redis keeps one sender
at a time, so the agent sees every turn once, numbered in order.
"""

import asyncio
from pathlib import Path
from typing import Any, List

import aiohttp
import pytest

from omnidesk_sandbox.testing import Sandbox
from tests.channel.conftest import (
    CallbackSetup,
    callback_on_two_instances,
    callback_receiver,
    channel_server,
    rasa_agent,
)
from tests.channel.test_delivery_faults import FAST, count, end_and_read_tracker

pytestmark = pytest.mark.redis


async def say(session: aiohttp.ClientSession, url: str, sender: str, text: str) -> int:
    async with session.post(
        f"{url}/webhooks/callback/webhook", json={"sender": sender, "message": text}
    ) as resp:
        await resp.read()
        return resp.status


async def test_turns_sent_to_two_instances_at_once_reach_the_agent_once_in_order(
    redis_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    async with callback_on_two_instances(redis_url, sandbox, str(tmp_path)) as (
        customer,
        first,
        second,
    ):
        chat = await CallbackSetup(server=first, customer=customer).hand_over("cust-1")
        await second.wait_with_agent("cust-1")
        sandbox.inject_fault("notifyUserNewChatMessage", latency_ms=5)
        texts = [f"line {i}" for i in range(40)]
        async with aiohttp.ClientSession() as session:
            statuses = await asyncio.gather(
                *(
                    say(session, (first, second)[i % 2].url, "cust-1", text)
                    for i, text in enumerate(texts)
                )
            )
        assert set(statuses) == {200}
        relayed = sandbox.chat(chat).messages[1:]
        numbers: List[int] = [m.number for m in relayed]  # type: ignore[misc]
        assert numbers == list(range(2, 42))
        assert sorted(m.text for m in relayed) == sorted(texts)
        assert sandbox.chat(chat).numbering_problems == []
        assert first.bot.seen[-1].text == "escalate cust-1"
        assert second.bot.seen == []


async def test_a_file_on_one_instance_shows_the_agent_named_on_the_other(
    redis_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    async with callback_on_two_instances(redis_url, sandbox, str(tmp_path)) as (
        customer,
        first,
        second,
    ):
        chat = await CallbackSetup(server=first, customer=customer).hand_over("cust-2")
        await sandbox.agent_reply(chat, "Hello", name="Anna", picture="https://example.com/a.png")
        await customer.wait_for(lambda r: [m for m in r if m.get("text") == "Hello"])
        # Omnidesk's next call lands on the other instance.
        sandbox.chat(chat).chat_server = sandbox.chat(chat).chat_server.replace(
            first.url, second.url
        )
        result = await sandbox.agent_upload(chat, "photo.png", b"\x89PNG\r\n\x1a\n0", "image/png")
        assert result.status == 200
        posted = await customer.wait_for(lambda r: [m for m in r if "image" in m])
        assert posted[0]["image"].startswith(second.url)
        assert posted[0]["agent"] == {"name": "Anna", "picture": "https://example.com/a.png"}


async def test_a_relayed_turn_makes_one_redis_round_trip_before_the_omnidesk_call(
    redis_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    async with callback_receiver() as customer, channel_server(
        {"callback": {"url": customer.url}},
        sandbox=sandbox,
        switchboard_url=redis_url,
        files_dir=str(tmp_path),
    ) as server:
        await CallbackSetup(server=server, customer=customer).hand_over("cust-3")
        board = server.switchboard
        client = server.relay._client
        steps: List[str] = []
        redis_call, notify = board.call, client.notify_user_new_chat_message

        async def counted_call(what: str, coroutine: Any) -> Any:
            steps.append(f"redis {what}")
            return await redis_call(what, coroutine)

        async def counted_notify(**fields: Any) -> Any:
            steps.append("omnidesk")
            return await notify(**fields)

        board.call = counted_call
        client.notify_user_new_chat_message = counted_notify
        await CallbackSetup(server=server, customer=customer).say("cust-3", "hello")
        assert steps[: steps.index("omnidesk")] == ["redis line"]


async def test_turns_on_two_instances_under_faults_keep_the_guarantee(
    redis_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    agent = rasa_agent()
    shared = {
        "switchboard_url": redis_url,
        "files_dir": str(tmp_path),
        "agent": agent,
        **FAST,
    }
    async with callback_receiver() as customer, channel_server(
        {"callback": {"url": customer.url}}, sandbox=sandbox, **shared
    ) as first, channel_server(
        {"callback": {"url": customer.url}}, sandbox=sandbox, **shared
    ) as second:
        setup = CallbackSetup(server=first, customer=customer)
        chat = await setup.hand_over("cust-4")
        await second.wait_with_agent("cust-4")
        sandbox.seed_faults(10)
        sandbox.inject_fault("notifyUserNewChatMessage", error_rate=0.3)
        sandbox.inject_fault("notifyUserNewChatMessage", drop=True, process_first=True, count=3)
        texts = [f"line {i}" for i in range(30)]
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(
                *(
                    say(session, (first, second)[i % 2].url, "cust-4", text)
                    for i, text in enumerate(texts)
                )
            )
        sandbox.clear_faults()
        arrivals = [(m.number, m.text) for m in sandbox.chat(chat).messages[1:]]
        tracker = await end_and_read_tracker(setup, chat, "cust-4")
        counts = count(arrivals, texts, tracker)
        print(f"\n30 turns on two instances under faults: {counts}")
        assert counts.lost == []
        assert counts.out_of_order == 0
        assert counts.renumbered == []
        numbers = {n for n, _ in arrivals}
        assert numbers | set(counts.undelivered) == set(range(2, 32))
