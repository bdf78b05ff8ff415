"""The floor: what two bare Sanic hops on loopback cost, at 1, 50 and 500 concurrent clients."""

import asyncio
import sys
from pathlib import Path
from typing import Dict, List

import aiohttp

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


async def run_floor(counts: Dict[int, int]) -> List[Figures]:
    """``counts``: concurrency -> number of turns."""
    script = str(HERE / "floor_servers.py")
    hop2 = ServerProcess([script, "hop2", "--port", "0"])
    try:
        hop1 = ServerProcess([script, "hop1", "--port", "0", "--next", hop2.url])
        try:
            return await _measure(hop1.url, counts)
        finally:
            hop1.stop()
    finally:
        hop2.stop()


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
    for figures in asyncio.run(run_floor({1: 500, 50: 5000, 500: 10000})):
        print(figures)
    sys.exit(0)
