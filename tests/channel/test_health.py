"""The liveness and readiness probes, on a real Sanic server with a real redis-server.

Readiness turns 503 within seconds of Redis going away (stopped: connections
refused; frozen: connections taken, never answered) and 200 once it is back;
liveness stays 200 throughout. Omnidesk failing shows in the body as degraded,
learnt from the channel's own calls: the probe never calls Omnidesk.
"""

import asyncio
import time
from typing import Any, Callable, Dict, Tuple

import aiohttp

from connectors.omnidesk.channel.health import Health
from connectors.omnidesk.settings import OmnideskSettings, Secret
from tests.channel.conftest import ACCOUNT_TOKEN, SECRET, SERVER_TOKEN, RedisServer, callback_setup
from tests.channel.test_metrics import scrape_url

READY = "/webhooks/omnidesk/health/ready"
LIVE = "/webhooks/omnidesk/health/live"
# A probe with a 1 s timeout must get its answer in time, whatever Redis does.
PROBE_ANSWERS_WITHIN = 1.5
# Redis away or back shows within a few seconds.
TURNS_WITHIN = 5.0

Probe = Tuple[int, Dict[str, Any], float]


async def probe(base_url: str, path: str) -> Probe:
    """GET a probe route: its status, JSON body and how long it took to answer."""
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
        base_url + path
    ) as answer:
        body = await answer.json()
        return answer.status, body, time.monotonic() - started


async def probe_until(
    base_url: str, path: str, wanted: Callable[[Probe], bool], within: float = TURNS_WITHIN
) -> Probe:
    """Probe as a kubelet would, until ``wanted``; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    seen = []
    while True:
        answer = await probe(base_url, path)
        assert answer[2] < PROBE_ANSWERS_WITHIN, f"{path} took {answer[2]:.2f} s: {answer[1]}"
        if wanted(answer):
            return answer
        seen.append(answer[:2])
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never answered as wanted in {within} s; saw {seen[-3:]}")
        await asyncio.sleep(0.2)


def status_is(code: int) -> Callable[[Probe], bool]:
    return lambda answer: answer[0] == code


async def switchboard_up(base_url: str) -> float:
    """The ``omnidesk_switchboard_up`` gauge as Prometheus scrapes it."""
    samples = await scrape_url(base_url + "/webhooks/omnidesk/metrics")
    return samples[("omnidesk_switchboard_up", frozenset())]


async def _readiness_follows(
    redis_server: RedisServer, away: Callable[[], None], back: Callable[[], None], reason: str
) -> None:
    async with callback_setup(switchboard_url=redis_server.url, metrics_enabled=True) as setup:
        url = setup.server.url
        _, body, _ = await probe_until(url, READY, status_is(200))
        assert body["status"] == "ready"
        assert await switchboard_up(url) == 1
        assert body["switchboard"]["status"] == "ok"
        assert body["switchboard"]["kind"] == "redis"

        away()
        _, body, _ = await probe_until(url, READY, status_is(503))
        assert body["status"] == "unavailable"
        assert body["switchboard"]["status"] == "error"
        assert body["switchboard"]["reason"] == reason
        assert str(redis_server.port) not in str(body)  # no host or port for the outside
        assert await switchboard_up(url) == 0  # what the SwitchboardDown alert reads
        assert (await probe(url, LIVE))[:2] == (200, {"status": "alive"})
        # The route every channel has keeps answering while the process serves.
        assert (await probe(url, "/webhooks/omnidesk/"))[0] == 200

        back()
        _, body, _ = await probe_until(url, READY, status_is(200))
        assert body["switchboard"]["status"] == "ok"
        assert "reason" not in body["switchboard"]
        assert await switchboard_up(url) == 1
        assert (await probe(url, LIVE))[0] == 200
        # And the channel does its work again: a handoff goes through Redis.
        await setup.hand_over("after-the-outage")


async def test_readiness_is_503_while_redis_is_stopped_and_200_when_it_is_back(
    redis_server: RedisServer,
) -> None:
    # Started again on the same port, empty.
    await _readiness_follows(
        redis_server, redis_server.stop, redis_server.start, "connection failed"
    )


async def test_readiness_is_503_while_redis_hangs_and_answers_in_time(
    redis_server: RedisServer,
) -> None:
    await _readiness_follows(
        redis_server, redis_server.pause, redis_server.resume, "no answer within 0.5 s"
    )


async def test_with_memory_switchboard_readiness_needs_no_redis() -> None:
    async with callback_setup() as setup:
        status, body, _ = await probe(setup.server.url, READY)
        assert status == 200
        assert body["switchboard"] == {
            "status": "ok",
            "kind": "memory",
            "checked_at": body["switchboard"]["checked_at"],
        }
        # Nothing has called Omnidesk yet, and the probe did not either.
        assert body["omnidesk"]["status"] == "unknown"
        assert setup.server.sandbox.calls == []


async def test_omnidesk_failing_shows_as_degraded_without_the_probe_calling_omnidesk() -> None:
    async with callback_setup(metrics_enabled=True) as setup:
        sandbox = setup.server.sandbox
        await setup.hand_over("degraded-1")
        sandbox.inject_fault("notifyUserNewChatMessage", status=503)
        assert await setup.say("degraded-1", "are you there?") == 200
        await setup.customer.wait_for(
            lambda received: [m for m in received if "did not reach" in m.get("text", "")]
        )
        calls_before = len(sandbox.calls)
        answers = [await probe(setup.server.url, READY) for _ in range(5)]
        assert len(sandbox.calls) == calls_before  # the probes asked Omnidesk nothing
        status, body, _ = answers[-1]
        assert status == 200  # Omnidesk down for every replica: no replica is taken out
        assert body["status"] == "degraded"
        omnidesk = body["omnidesk"]
        assert omnidesk["status"] == "failing"
        assert omnidesk["reason"] == "HTTP 503"
        assert omnidesk["last_call"] == "notifyUserNewChatMessage"
        assert omnidesk["failures_in_a_row"] >= 2  # every attempt counts
        assert omnidesk["last_failure_at"].endswith("Z")
        assert SERVER_TOKEN not in str(body) and ACCOUNT_TOKEN not in str(body)
        metrics_url = setup.server.url + "/webhooks/omnidesk/metrics"
        # What the OmnideskUnreachable alert reads.
        assert (await scrape_url(metrics_url))[("omnidesk_api_reachable", frozenset())] == 0

        sandbox.clear_faults()
        assert await setup.say("degraded-1", "now?") == 200
        status, body, _ = await probe_until(
            setup.server.url, READY, lambda answer: answer[1]["status"] == "ready"
        )
        assert body["omnidesk"]["status"] == "ok"
        assert "reason" not in body["omnidesk"]
        assert (await scrape_url(metrics_url))[("omnidesk_api_reachable", frozenset())] == 1


async def test_a_quiet_instance_asks_omnidesk_itself() -> None:
    async with callback_setup(api_check_interval=0.3) as setup:
        sandbox = setup.server.sandbox
        _, body, _ = await probe_until(
            setup.server.url, READY, lambda answer: answer[1]["omnidesk"]["status"] == "ok"
        )
        assert body["omnidesk"]["last_call"] == "requestChatConfig"
        assert {call.endpoint for call in sandbox.calls} == {"requestChatConfig"}
        sandbox.inject_fault("requestChatConfig", status=500)
        _, body, _ = await probe_until(
            setup.server.url, READY, lambda answer: answer[1]["omnidesk"]["status"] == "failing"
        )
        assert body["omnidesk"]["reason"] == "HTTP 500"
        assert body["status"] == "degraded"


async def test_the_check_is_off_with_interval_zero() -> None:
    async with callback_setup(api_check_interval=0) as setup:
        _, body, _ = await probe(setup.server.url, READY)
        assert body["omnidesk"]["status"] == "unknown"
        assert setup.server.channel.health.state.omnidesk_ok is None
        assert setup.server.sandbox.calls == []


async def test_before_the_channel_starts_and_after_it_stops_the_probes_say_so() -> None:
    settings = OmnideskSettings(
        chat_account_token=Secret(ACCOUNT_TOKEN),
        chat_server_token=Secret(SERVER_TOKEN),
        public_url="http://127.0.0.1:5005",
        hookpoint_secret=Secret(SECRET),
    )
    health = Health(settings)
    assert await health.readiness() == (503, {"status": "starting"})
    assert health.liveness() == (503, {"status": "starting"})
    health.start()
    assert (await health.readiness())[0] == 200
    await health.stop()
    assert await health.readiness() == (503, {"status": "stopping"})
    assert health.liveness() == (503, {"status": "stopping"})
