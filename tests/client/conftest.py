"""Fixtures of the client tests.

Logic (retries, waits, budgets, error mapping, validation) runs against
``scripted``: Omnidesk scripted behind a MockTransport, no socket. What goes on
the wire runs against ``omnidesk``: the fake Omnidesk on loopback, reading the
real multipart body.
"""

from typing import Any, List

import pytest
from aiohttp.test_utils import TestServer

from connectors.omnidesk.client import OmnideskClient
from tests.client.fake_omnidesk import FakeOmnidesk, Schedule, settings_for
from tests.client.scripted_omnidesk import ScriptedOmnidesk


@pytest.fixture
async def omnidesk() -> Any:
    fake = FakeOmnidesk()
    server = TestServer(fake.app, host="127.0.0.1", port=0)
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake
    await fake.release()
    await server.close()


@pytest.fixture
def scripted() -> ScriptedOmnidesk:
    return ScriptedOmnidesk()


@pytest.fixture
def schedule() -> Schedule:
    return Schedule()


@pytest.fixture
async def make_client(omnidesk: FakeOmnidesk, schedule: Schedule) -> Any:
    """Build clients against the fake on loopback (settings overridable by keyword)."""
    clients: List[OmnideskClient] = []

    def make(**overrides: Any) -> OmnideskClient:
        client = OmnideskClient(
            settings_for(omnidesk, **overrides), rng=schedule, sleep=schedule.sleep
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def make_scripted_client(scripted: ScriptedOmnidesk, schedule: Schedule) -> Any:
    """Build clients whose transport is the scripted Omnidesk (settings overridable by keyword)."""
    clients: List[OmnideskClient] = []

    def make(**overrides: Any) -> OmnideskClient:
        client = OmnideskClient(
            settings_for(scripted, **overrides),
            rng=schedule,
            sleep=schedule.sleep,
            transport=scripted.transport(),
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
