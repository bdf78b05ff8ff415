"""Fixtures every layer of the tests shares.

Tests that need a program from outside Python (redis-server, chromium) call
``require_program``: it skips with a message naming the Debian package to
install, except under CI=true, where a missing part fails the run.
"""

import os
import shutil
import socket
from typing import Any, AsyncIterator, Optional

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_program(program: str, package: str, path: Optional[str] = None) -> str:
    """Return the path of ``program`` or skip (fail under CI) naming ``package``."""
    found = path if path and os.path.exists(path) else shutil.which(program)
    if found:
        return found
    message = (
        f"{program} not found: install the Debian package '{package}' (apt-get install {package})"
    )
    if IN_CI:
        pytest.fail(message + " -- it is required under CI=true")
    pytest.skip(message)
    raise AssertionError("unreachable")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers that can't bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Real headless Chromium (Debian's), driven by Playwright; closed after the test."""
    chromium = require_program("chromium", "chromium", "/usr/bin/chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()
