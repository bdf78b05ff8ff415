"""The callback customer's app backend: where Rasa's callback channel posts replies.

An aiohttp server on 127.0.0.1, port 0, in a thread of its own with its own
event loop, so it can start before the (synchronous) stack and live for the
whole test session whatever event loop each test runs in. It keeps every JSON
body it receives, per recipient.
"""

import asyncio
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from aiohttp import web

START_TIMEOUT = 10.0


class CallbackReceiver:
    """Collects what Rasa posts to the callback URL; ``url`` goes into the credentials."""

    def __init__(self) -> None:
        self._received: List[Dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner: Optional[web.AppRunner] = None
        self._thread: Optional[threading.Thread] = None
        self._started = threading.Event()
        self._error: Optional[BaseException] = None
        self.url = ""

    # -- what the customer's backend saw --------------------------------------------

    def for_recipient(self, recipient_id: str) -> List[Dict[str, Any]]:
        with self._lock:
            return [dict(m) for m in self._received if m.get("recipient_id") == recipient_id]

    def texts(self, recipient_id: str) -> List[str]:
        return [m["text"] for m in self.for_recipient(recipient_id) if m.get("text")]

    async def wait_for(
        self,
        recipient_id: str,
        condition: Callable[[List[Dict[str, Any]]], Any],
        timeout: float = 15.0,
    ) -> Any:
        """Wait until ``condition(messages for recipient)`` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition(self.for_recipient(recipient_id))
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the callback customer {recipient_id} never got it within {timeout} s; "
                    f"got {self.for_recipient(recipient_id)!r}"
                )
            await asyncio.sleep(0.05)

    # -- lifecycle ---------------------------------------------------------------------

    async def _bot(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            self._received.append(body if isinstance(body, dict) else {"body": body})
        return web.json_response({})

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/bot", self._bot)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, shutdown_timeout=1.0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/bot"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as error:
            self._error = error
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()

    def start(self) -> "CallbackReceiver":
        self._thread = threading.Thread(target=self._run, name="callback-receiver", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT):
            raise RuntimeError(f"the callback receiver did not start within {START_TIMEOUT} s")
        if self._error is not None:
            raise RuntimeError(f"the callback receiver could not start: {self._error}")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(START_TIMEOUT)
