"""`rasa run` with the connector answers the liveness and readiness probes a kubelet sends."""

import aiohttp
import pytest

from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e


async def test_rasa_run_is_live_and_ready_and_says_what_it_knows(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{stack.rasa_url}/webhooks/omnidesk/health/live") as answer:
        assert (answer.status, await answer.json()) == (200, {"status": "alive"})
    async with http.get(f"{stack.rasa_url}/webhooks/omnidesk/health/ready") as answer:
        body = await answer.json()
        assert answer.status == 200, body
        assert answer.headers["Cache-Control"] == "no-store"
    assert body["switchboard"]["status"] == "ok"
    assert body["omnidesk"]["status"] in ("unknown", "ok")  # as the session's journeys left it
