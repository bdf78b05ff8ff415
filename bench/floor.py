"""The floor: two bare Sanic hops on loopback, and the far end alone.

``Floor`` starts hop2 and hop1 (bench/floor_servers.py) as processes and gives
the turns the benchmarks time: a floor turn (client -> hop1 -> hop2), with a
Redis URL the same through a second hop1 that makes one Redis round trip per
turn (client -> hop1 + Redis -> hop2), and a "far end alone" turn (the connector's multipart notifyUserNewChatMessage posted
straight to hop2 or to the sandbox), so a relayed turn can be split into the
far end's part and the first hop's.
"""

import asyncio
from pathlib import Path
from typing import Any, Optional

import aiohttp

from bench.floor_servers import CHAT_SERVER, TEXT_PART
from bench.load import Turn
from bench.procs import ServerProcess

HERE = Path(__file__).resolve().parent
FAR_END_CHATS = 500


def http_session() -> aiohttp.ClientSession:
    """The benchmark's client: unlimited connections, bounded time per call."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30, connect=10),
        connector=aiohttp.TCPConnector(limit=0),
    )


async def warm_connections(turn: Turn, concurrency: int) -> None:
    """Open the connections a run at this concurrency keeps alive, before timing it."""
    await asyncio.gather(*(turn(-1 - i) for i in range(concurrency)), return_exceptions=True)


class Floor:
    """hop2 and hop1 (and with ``redis_url`` hop1 with one Redis round trip), until ``stop()``."""

    def __init__(self, redis_url: Optional[str] = None) -> None:
        script = str(HERE / "floor_servers.py")
        self.hop2 = ServerProcess([script, "hop2", "--port", "0"])
        self.hop1: Optional[ServerProcess] = None
        self.hop1_redis: Optional[ServerProcess] = None
        try:
            self.hop1 = ServerProcess([script, "hop1", "--port", "0", "--next", self.hop2.url])
            if redis_url:
                self.hop1_redis = ServerProcess(
                    [script, "hop1", "--port", "0", "--next", self.hop2.url, "--redis", redis_url]
                )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for hop in (self.hop1_redis, self.hop1):
            if hop is not None:
                hop.stop()
        self.hop2.stop()

    def __enter__(self) -> "Floor":
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def turn(self, http: aiohttp.ClientSession, with_redis: bool = False) -> Turn:
        """A customer turn through both hops: JSON to hop1, multipart on to hop2.

        ``with_redis``: through the hop1 that makes one Redis round trip per turn.
        """
        hop1 = self.hop1_redis if with_redis else self.hop1
        assert hop1 is not None, "the floor was started without a Redis URL"
        url = hop1.url + "/turn"

        async def turn(i: int) -> None:
            body = {"sender": f"floor-{i % 500}", "message": f"turn {i}", "number": 2}
            async with http.post(url, json=body) as answer:
                await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"floor answered {answer.status}")

        return turn


def far_end_turn(http: aiohttp.ClientSession, base_url: str, tag: str) -> Turn:
    """The connector's notifyUserNewChatMessage form, posted straight to ``base_url``.

    Unnumbered, so the sandbox's chats for it (one per ``i % FAR_END_CHATS``)
    record numbering notes, never a refusal.
    """
    url = base_url + "/api/v2/chat/notifyUserNewChatMessage"

    async def turn(i: int) -> None:
        chat_session_id = f"rasa-{tag}-far-end-{i % FAR_END_CHATS:05d}"
        form = aiohttp.FormData()
        for field, value in (
            ("message", f"direct {i}"),
            ("channelID", "8"),
            ("chatAccountToken", "sandboxAccountToken1"),
            ("chatSessionID", chat_session_id),
            ("chatServer", CHAT_SERVER),
        ):
            form.add_field(field, value, content_type=TEXT_PART)
        async with http.post(url, data=form) as answer:
            await answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{base_url} answered {answer.status}")

    return turn
