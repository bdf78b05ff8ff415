"""Fixtures every layer of the tests shares.

Tests that need a program from outside Python (redis-server, chromium) call
``require_program``: it skips with a message naming the Debian package to
install, except under CI=true, where a missing part fails the run.

The same tests run on Rasa Open Source 3.6 (.venv) and on Rasa Pro (.venv-pro).
Rasa Pro runs its command line (``rasa train``, ``rasa data validate``,
``rasa run``) only with a license, so under Rasa Pro the tests marked ``e2e`` or
``rasa_cli`` skip, with that reason, unless RASA_LICENSE is set; the library
itself (channels, Agent, server, rasa_sdk) needs none.
"""

import os
import shutil
from typing import Any, AsyncIterator, List, Optional

import aiohttp
import pytest
import pytest_asyncio

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Rasa Pro imports litellm, which otherwise fetches its model price list over the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def installed_version(distribution: str) -> Optional[str]:
    """The installed version of ``distribution``, or None (without importing it)."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


RASA_PRO = installed_version("rasa-pro")
NEEDS_LICENSE = (
    f"Rasa Pro {RASA_PRO} runs its command line (rasa train, rasa data validate, rasa run) "
    "only with a license: set RASA_LICENSE to run this test"
)


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    if RASA_PRO is None or os.environ.get("RASA_LICENSE"):
        return
    for item in items:
        if item.get_closest_marker("e2e") or item.get_closest_marker("rasa_cli"):
            item.add_marker(pytest.mark.skip(reason=NEEDS_LICENSE))


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


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client for a test's calls to the stack, the cluster and the agent's desk."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
