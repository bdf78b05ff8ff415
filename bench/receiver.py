"""The callback customer's backend, in the benchmark's own event loop.

Rasa's callback channel posts each bot or agent message here. A benchmark asks
``expect(recipient, text)`` before it triggers a message and awaits the future,
so the time it measures ends the moment the message arrives (no polling).
"""

import asyncio
from typing import Any, Dict, List, Optional, Tuple

from aiohttp import web

Key = Tuple[str, str]


class Receiver:
    def __init__(self) -> None:
        self.url = ""
        self.received = 0
        self._waiting: Dict[Key, asyncio.Future[float]] = {}
        self._runner: Optional[web.AppRunner] = None

    def expect(self, recipient_id: str, text: str) -> "asyncio.Future[float]":
        """A future that resolves (to the loop time of arrival) when this message arrives."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[(recipient_id, text)] = future
        return future

    def forget(self, recipient_id: str, text: str) -> None:
        self._waiting.pop((recipient_id, text), None)

    async def _bot(self, request: web.Request) -> web.Response:
        body: Any = await request.json()
        self.received += 1
        if isinstance(body, dict):
            key = (str(body.get("recipient_id")), str(body.get("text")))
            future = self._waiting.pop(key, None)
            if future is not None and not future.done():
                future.set_result(asyncio.get_running_loop().time())
        return web.json_response({})

    async def start(self) -> "Receiver":
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/bot", self._bot)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, shutdown_timeout=1.0)
        await site.start()
        addresses: List[Any] = list(self._runner.addresses)
        self.url = f"http://127.0.0.1:{addresses[0][1]}/bot"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
