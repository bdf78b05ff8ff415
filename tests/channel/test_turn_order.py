"""Turns reach the agent once each, in the order the customer typed them, on real parts.

A socket.io widget or a callback backend types bursts of turns 20 to 60 ms apart
while the escalation is slow, or while Omnidesk is slow, on one instance and on
two sharing Redis; the sandbox, as Omnidesk, records what the agent reads.
"""

import asyncio
import random
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, List

import aiohttp
import pytest

from omnidesk_sandbox.testing import Sandbox
from tests.channel.conftest import (
    CallbackSetup,
    ChannelServer,
    callback_receiver,
    callback_setup,
    channel_server,
    rasa_agent,
)
from tests.channel.test_outbox import SessionWidget, agent_texts
from tests.channel.test_socketio_relay import PERSISTENT

BURST = 6


def agent_reads(server: ChannelServer, chat: str) -> List[str]:
    return [m.text for m in server.sandbox.chat(chat).messages]


async def burst(send: Any, prefix: str, count: int = BURST, seed: int = 7) -> List[str]:
    """Type ``count`` turns 20 to 60 ms apart, each sent as soon as typed."""
    rng = random.Random(seed)
    typed = [f"{prefix} {i}" for i in range(count)]
    for text in typed:
        await send(text)
        await asyncio.sleep(rng.uniform(0.02, 0.06))
    return typed


def switchboards() -> Any:
    return pytest.mark.parametrize(
        "store", ["memory", pytest.param("redis", marks=pytest.mark.redis)]
    )


def board_settings(store: str, request: Any, tmp_path: Path) -> Any:
    if store == "memory":
        return {}
    return {"switchboard_url": request.getfixturevalue("redis_url"), "files_dir": str(tmp_path)}


@switchboards()
async def test_a_burst_typed_during_a_slow_escalation_reaches_the_agent_in_order(
    store: str, request: Any, tmp_path: Path
) -> None:
    async with channel_server(PERSISTENT, **board_settings(store, request, tmp_path)) as server:
        widget = SessionWidget(f"burst-escalation-{store}")
        await widget.join(server.url)
        try:
            started = await server.open_chat()
            server.escalate_on("human please", started)
            server.bot.delays["human please"] = 1.0  # the action's Omnidesk calls
            await widget.say("human please")
            await asyncio.sleep(0.1)
            typed = await burst(widget.say, "while connecting")
            chat = started.chat_session_id
            await server.sandbox.wait_for(lambda: len(agent_reads(server, chat)) >= 1 + BURST)
            await asyncio.sleep(0.2)  # nothing more, nothing twice
            assert agent_reads(server, chat)[1:] == typed
            numbers = [m.number for m in server.sandbox.chat(chat).messages[1:]]
            assert numbers == list(range(2, 2 + BURST))
            assert [m.text for m in server.bot.seen] == ["human please"]
        finally:
            await widget.close()


@switchboards()
async def test_a_burst_typed_while_omnidesk_is_slow_reaches_the_agent_in_order(
    store: str, request: Any, tmp_path: Path
) -> None:
    async with channel_server(PERSISTENT, **board_settings(store, request, tmp_path)) as server:
        widget = SessionWidget(f"burst-slow-{store}")
        await widget.join(server.url)
        try:
            started = await server.open_chat()
            server.escalate_on("human please", started)
            await widget.say("human please")
            await server.wait_with_agent(widget.session_id)
            server.sandbox.inject_fault("notifyUserNewChatMessage", latency_ms=250)
            typed = await burst(widget.say, "slow desk", seed=11)
            chat = started.chat_session_id
            await server.sandbox.wait_for(
                lambda: len(agent_reads(server, chat)) >= 1 + BURST, timeout=15
            )
            await asyncio.sleep(0.3)
            assert agent_reads(server, chat)[1:] == typed
        finally:
            server.sandbox.clear_faults()
            await widget.close()


@pytest.mark.redis
async def test_posts_alternating_between_two_instances_reach_the_agent_in_order(
    redis_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    shared = {"switchboard_url": redis_url, "files_dir": str(tmp_path), "agent": rasa_agent()}
    async with AsyncExitStack() as stack:
        customer = await stack.enter_async_context(callback_receiver())
        servers = [
            await stack.enter_async_context(
                channel_server({"callback": {"url": customer.url}}, sandbox=sandbox, **shared)
            )
            for _ in range(2)
        ]
        chat = await CallbackSetup(server=servers[0], customer=customer).hand_over("alt-1")
        sandbox.inject_fault("notifyUserNewChatMessage", latency_ms=150)
        posts: List[asyncio.Future[int]] = []
        index = 0

        async def send(text: str) -> None:
            nonlocal index
            setup = CallbackSetup(server=servers[index % 2], customer=customer)
            index += 1
            posts.append(asyncio.ensure_future(setup.say("alt-1", text)))

        try:
            typed = await burst(send, "alternating", count=8, seed=3)
            assert await asyncio.gather(*posts) == [200] * 8
            await sandbox.wait_for(lambda: len(agent_reads(servers[0], chat)) >= 9, timeout=15)
            assert agent_reads(servers[0], chat)[1:] == typed
        finally:
            sandbox.clear_faults()


async def test_a_turn_whose_callback_client_gave_up_is_still_relayed() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("gone-1")
        setup.server.sandbox.inject_fault("notifyUserNewChatMessage", latency_ms=800)
        url = f"{setup.server.url}/webhooks/callback/webhook"
        async with aiohttp.ClientSession() as session:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(
                    session.post(url, json={"sender": "gone-1", "message": "still relayed?"}), 0.2
                )
        setup.server.sandbox.clear_faults()
        await setup.server.sandbox.wait_for(
            lambda: agent_reads(setup.server, chat)[-1] == "still relayed?", timeout=10
        )
        await setup.server.relay.wait_idle(3.0)
        # It reached the agent: the customer is not told otherwise.
        assert not any("did not reach" in text for text in setup.customer.texts())


@switchboards()
async def test_a_customer_away_when_the_chat_ends_gets_the_last_words_then_the_end(
    store: str, request: Any, tmp_path: Path
) -> None:
    async with channel_server(PERSISTENT, **board_settings(store, request, tmp_path)) as server:
        widget = SessionWidget(f"away-end-{store}")
        await widget.join(server.url)
        started = await server.open_chat()
        server.escalate_on("human please", started)
        await widget.say("human please")
        await server.wait_with_agent(widget.session_id)
        await widget.leave()
        chat = started.chat_session_id
        for text in ("One more thing", "Goodbye"):
            assert (await server.sandbox.agent_reply(chat, text, name="Anna")).status == 200
        assert (await server.sandbox.agent_end(chat)).status == 200
        await server.relay.wait_idle(3.0)
        back = SessionWidget(widget.session_id)
        await back.join(server.url)
        try:
            await back.wait_for(lambda: len(back.texts()) >= 3)
            await asyncio.sleep(0.2)
            assert agent_texts(back) == ["One more thing", "Goodbye"]
            assert back.texts() == [
                "One more thing",
                "Goodbye",
                "Back with the bot (ended_by_agent).",
            ]
        finally:
            await back.close()


async def test_a_flood_without_the_token_cannot_starve_the_real_customer() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("victim-2")
        token = setup.customer_token("victim-2")
        event_url = f"{setup.server.url}/webhooks/omnidesk/event"
        async with aiohttp.ClientSession() as session:
            for _ in range(60):
                async with session.post(
                    event_url, json={"sender": "victim-2", "event": "startedtyping"}
                ) as answer:
                    assert answer.status == 404
            form = aiohttp.FormData()
            form.add_field("file", b"real photo", filename="photo.png", content_type="image/png")
            async with session.post(
                f"{setup.server.url}/webhooks/omnidesk/upload?sender=victim-2",
                data=form,
                headers={"X-Omnidesk-Customer-Token": token},
            ) as answer:
                assert answer.status == 200, await answer.text()
        assert [a.name for a in setup.server.sandbox.chat(chat).attachments] == ["photo.png"]
        # Buckets are kept for authenticated conversations only.
        assert len(setup.server.channel.routes.rate_limit) == 1
