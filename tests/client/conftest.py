"""Fixtures of the client tests: the fake Omnidesk on loopback, clients against it."""

from typing import Any, List

import pytest
from aiohttp.test_utils import TestServer

from connectors.omnidesk.client import OmnideskClient
from tests.client.fake_omnidesk import FakeOmnidesk, Schedule, settings_for


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
def schedule() -> Schedule:
    return Schedule()


@pytest.fixture
async def make_client(omnidesk: FakeOmnidesk, schedule: Schedule) -> Any:
    """Build clients against the fake (settings overridable by keyword); all closed afterwards."""
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
