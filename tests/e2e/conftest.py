"""One running stack for every end-to-end test of the session.

The callback receiver starts first, so its URL goes into the generated
credentials; then ``Stack.start`` launches the sandbox, the action server and
Rasa (20-30 s on two cores, the model trained first if it is stale). The
processes' logs are kept in artifacts/e2e/stack/ for a failing run.
Each test gets fresh conversation ids, and the sandbox's faults and agent
availability are reset before and after it.
"""

from pathlib import Path
from typing import AsyncIterator, Iterator

import aiohttp
import pytest
import pytest_asyncio

from tests.e2e.people import CallbackCustomer, Desk, RasaApi, SocketCustomer, ready_desk
from tests.e2e.receiver import CallbackReceiver
from tests.e2e.stack import ROOT, Stack, free_port

ARTIFACTS = ROOT / "artifacts" / "e2e"

# Give up quickly when a test makes the sandbox fail every call.
FAST_FAILURE_ENV = {
    "OMNIDESK_MAX_ATTEMPTS": "2",
    "OMNIDESK_BACKOFF_BASE": "0.05",
    "OMNIDESK_BACKOFF_MAX": "0.1",
    "OMNIDESK_REQUEST_TIMEOUT": "5",
    "OMNIDESK_RETRY_BUDGET": "10",
}


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def callback_inbox() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture(scope="session")
def stack(callback_inbox: CallbackReceiver, artifacts: Path) -> Iterator[Stack]:
    # Both processes serve their metrics: Rasa under /webhooks/omnidesk/metrics,
    # the action server on a port of its own (test_metrics.py scrapes them).
    metrics_env = {
        "OMNIDESK_METRICS_ENABLED": "true",
        "OMNIDESK_ACTION_METRICS_PORT": str(free_port()),
    }
    started = Stack.start(
        log_dir=artifacts / "stack",
        callback_url=callback_inbox.url,
        env={**FAST_FAILURE_ENV, **metrics_env},
        # The browser test serves web/ from its own origin; its uploads need CORS.
        cors=["*"],
        timeout=180,
    )
    try:
        yield started
    finally:
        started.stop()


@pytest_asyncio.fixture
async def desk(stack: Stack, http: aiohttp.ClientSession) -> AsyncIterator[Desk]:
    """The agent's desk, with agents online and no faults, before and after the test."""
    stack.check_alive()
    async with ready_desk(stack.sandbox_url, http) as agent_desk:
        yield agent_desk


@pytest.fixture
def rasa(stack: Stack, http: aiohttp.ClientSession) -> RasaApi:
    return RasaApi(stack.rasa_url, http)


@pytest_asyncio.fixture
async def socket_customer(
    stack: Stack, http: aiohttp.ClientSession
) -> AsyncIterator[SocketCustomer]:
    customer = SocketCustomer(stack.rasa_url, http)
    await customer.connect()
    try:
        yield customer
    finally:
        await customer.close()


@pytest_asyncio.fixture
async def callback_customer(
    stack: Stack, http: aiohttp.ClientSession, callback_inbox: CallbackReceiver
) -> CallbackCustomer:
    return CallbackCustomer(stack.rasa_url, http, callback_inbox)
