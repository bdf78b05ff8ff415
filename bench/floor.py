"""The floor: what two bare Sanic hops on loopback cost, at 1, 50 and 500 concurrent clients."""

import asyncio
import sys
from pathlib import Path
from typing import Dict, List

import aiohttp

from bench.floor_servers import CHAT_SERVER, TEXT_PART
from bench.load import Figures, Turn, measure
from bench.procs import ServerProcess

HERE = Path(__file__).resolve().parent


def http_session() -> aiohttp.ClientSession:
    """The benchmark's client: unlimited connections, bounded time per call."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30, connect=10),
        connector=aiohttp.TCPConnector(limit=0),
    )


async def warm_connections(turn: Turn, concurrency: int) -> None:
    """Open the connections a run at this concurrency keeps alive, before timing it."""
    await asyncio.gather(*(turn(-1 - i) for i in range(concurrency)), return_exceptions=True)


async def run_floor(counts: Dict[int, int], direct_count: int) -> List[Figures]:
    """``counts``: concurrency -> number of turns; also hop2 alone, ``direct_count`` turns."""
    script = str(HERE / "floor_servers.py")
    hop2 = ServerProcess([script, "hop2", "--port", "0"])
    try:
        hop1 = ServerProcess([script, "hop1", "--port", "0", "--next", hop2.url])
        try:
            results = await _measure(hop1.url, counts)
        finally:
            hop1.stop()
        results.append(await omnidesk_alone("hop2 alone c=1", hop2.url, direct_count))
        return results
    finally:
        hop2.stop()


async def omnidesk_alone(name: str, base_url: str, count: int, chat: str = "") -> Figures:
    """The second hop by itself: the connector's multipart notifyUserNewChatMessage, c=1.

    Posted to hop2 and to the sandbox, it tells how much of a turn each far end
    costs, so the rest is the first hop's (the connector's, or the floor's hop1).
    """
    chat_session_id = chat or "rasa-0123456789abcdef0123456789abcdef"
    async with http_session() as http:

        async def turn(i: int) -> None:
            form = aiohttp.FormData()
            for field, value in (
                ("message", f"direct {i}"),
                ("channelID", "8"),
                ("chatAccountToken", "sandboxAccountToken1"),
                ("chatSessionID", chat_session_id),
                ("chatServer", CHAT_SERVER),
            ):
                form.add_field(field, value, content_type=TEXT_PART)
            url = base_url + "/api/v2/chat/notifyUserNewChatMessage"
            async with http.post(url, data=form) as answer:
                await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"{name}: answered {answer.status}")

        return await measure(name, turn, count=count)


async def _measure(url: str, counts: Dict[int, int]) -> List[Figures]:
    results: List[Figures] = []
    async with http_session() as http:

        async def turn(i: int) -> None:
            body = {"sender": f"floor-{i % 500}", "message": f"turn {i}", "number": 2}
            async with http.post(url + "/turn", json=body) as answer:
                await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"floor answered {answer.status}")

        for concurrency, count in sorted(counts.items()):
            await warm_connections(turn, concurrency)
            results.append(
                await measure(f"floor c={concurrency}", turn, count=count, concurrency=concurrency)
            )
    return results


if __name__ == "__main__":
    for figures in asyncio.run(run_floor({1: 500, 50: 5000, 500: 10000}, 500)):
        print(figures)
    sys.exit(0)
