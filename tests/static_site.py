"""A directory served as static files on its own loopback origin, for the browser tests."""

import pathlib
from contextlib import asynccontextmanager
from typing import AsyncIterator

from aiohttp import web


@asynccontextmanager
async def static_site(directory: pathlib.Path) -> AsyncIterator[str]:
    """``directory`` on 127.0.0.1 at a free port, like `python -m http.server`; its URL."""
    app = web.Application()
    app.router.add_static("/", directory)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, shutdown_timeout=1.0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
