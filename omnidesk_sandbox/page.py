"""The agent page: the HTML/CSS/JS in static/ and the live stream of changes it listens to."""

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, Dict, cast

from aiohttp import web

from omnidesk_sandbox.keys import state_of, stopping_of, streams_of

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
KEEPALIVE_SECONDS = 15.0
QUEUE_SIZE = 1000
SHUTDOWN = {"type": "shutdown"}
STREAMS_STOP_SECONDS = 2.0


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: every change of state, as JSON, until the sandbox stops."""
    state = state_of(request.app)
    queue: asyncio.Queue[Dict[str, Any]] = asyncio.Queue(maxsize=QUEUE_SIZE)
    overflow = {"hit": False}

    def listen(event: Dict[str, Any]) -> None:
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            # A page that cannot keep up is disconnected; EventSource reconnects and reloads.
            overflow["hit"] = True

    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    state.subscribe(listen)
    task = asyncio.current_task()
    streams = streams_of(request.app)  # so shutdown can wait for each stream's last write
    if task is not None:
        streams.add(task)
    try:
        await response.write(b"event: hello\ndata: {}\n\n")
        while not stopping_of(request.app).is_set() and not overflow["hit"]:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except asyncio.TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if event is SHUTDOWN:
                break
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        logger.debug("agent page stream closed by the browser")
    finally:
        state.unsubscribe(listen)
        if task is not None:
            streams.discard(task)
    return response


async def end_streams(app: web.Application) -> None:
    """on_shutdown: let every open stream finish, so the server stops at once."""
    stopping_of(app).set()
    state_of(app)._emit(SHUTDOWN)
    streams = streams_of(app)
    if streams:
        await asyncio.wait(set(streams), timeout=STREAMS_STOP_SECONDS)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/agent", index)
    app.router.add_get("/_sandbox/events", events)
    app.router.add_static("/static/", STATIC_DIR)
    cast(Any, app.on_shutdown).append(end_streams)
