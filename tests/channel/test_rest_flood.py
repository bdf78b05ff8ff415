"""A flood of polls and streams: bounded, answered 429 with Retry-After, never 5xx.

Guessers without a token, and customers holding many polls and streams at
once, hit one channel server while a real customer waits for the agent. What
is held stays within its bounds, every refusal is a 4xx, and the real customer
gets the agent's message.
"""

import asyncio
from collections import Counter
from typing import Any, List, Tuple

import aiohttp

from tests.channel.conftest import channel_server
from tests.channel.rest_client import RestCustomer, texts
from tests.channel.test_rest_pull import hand_over, the_id

FLOODERS = 3
EACH = 12  # polls and streams per flooding conversation, at once
GUESSES = 60


async def test_a_flood_of_polls_and_streams_is_bounded_and_the_real_customer_is_served() -> None:
    async with channel_server({"rest": None}) as server, aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0)
    ) as http:
        customer = RestCustomer(server.url, "real-customer", http)
        chat = await hand_over(customer, server)
        flooders = [RestCustomer(server.url, f"flooder-{n}", http) for n in range(FLOODERS)]
        for flooder in flooders:
            await hand_over(flooder, server)
        routes = server.channel.routes
        statuses: List[int] = []

        async def hold(flooder: RestCustomer, n: int) -> None:
            if n % 2:
                status, _, _ = await flooder.poll(after=the_id(flooder.answers[-1]), wait=3)
            else:
                status, body = await flooder.ticket()
                if status == 200:
                    async with flooder.open(body["url"]) as (status, events):
                        if events is not None:
                            await asyncio.sleep(3)
            statuses.append(status)

        async def guess(n: int) -> None:
            async with http.get(
                f"{server.url}/webhooks/omnidesk/messages",
                params={"sender": "real-customer", "wait": "25"},
                headers={"X-Omnidesk-Customer-Token": f"{n:040x}"},
            ) as answer:
                await answer.read()
                statuses.append(answer.status)

        flood = [
            asyncio.ensure_future(hold(flooder, n)) for flooder in flooders for n in range(EACH)
        ] + [asyncio.ensure_future(guess(n)) for n in range(GUESSES)]
        await asyncio.sleep(1.0)
        # While the flood holds what it may, the real customer still gets the agent.
        held_now = len(routes.held)
        assert held_now <= FLOODERS * 4
        real = asyncio.ensure_future(customer.poll(after=the_id(customer.answers[-1]), wait=25))
        await asyncio.sleep(0.2)
        await server.sandbox.agent_reply(chat, "Still here for you", name="Anna")
        status, messages, _ = await asyncio.wait_for(real, 15)
        assert (status, texts(messages)) == (200, ["Still here for you"])
        await asyncio.gather(*flood)

        counts = Counter(statuses)
        assert not [s for s in counts if s >= 500], counts
        assert counts[404] == GUESSES
        assert counts[429] >= FLOODERS * (EACH - 4), counts
        # A client that went away releases what it held as soon as its socket closes.
        for _ in range(100):
            if len(routes.held) == 0:
                break
            await asyncio.sleep(0.05)
        assert len(routes.held) == 0


async def test_the_process_holds_at_most_pull_max_held_then_answers_429() -> None:
    async with channel_server({"rest": None}, pull_max_held=4) as server, aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0)
    ) as http:
        customers = [RestCustomer(server.url, f"held-{n}", http) for n in range(5)]
        for customer in customers:
            await hand_over(customer, server)

        async def poll(customer: RestCustomer) -> Tuple[int, Any]:
            status, _, headers = await customer.poll(after=the_id(customer.answers[-1]), wait=2)
            return status, headers.get("Retry-After")

        held = [asyncio.ensure_future(poll(c)) for c in customers[:4]]
        await asyncio.sleep(0.3)
        status, retry_after = await poll(customers[4])
        assert status == 429 and retry_after is not None and int(retry_after) >= 1
        assert [s for s, _ in await asyncio.gather(*held)] == [200] * 4
        assert (await poll(customers[4]))[0] == 200
