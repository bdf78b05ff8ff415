"""Injected faults: the connector's client meets them as it would meet a failing Omnidesk."""

import asyncio

import aiohttp
import pytest

from omnidesk_sandbox.testing import Sandbox

from .support import SESSION_ID, message_form, post

NEW_MESSAGE = "/api/v2/chat/notifyUserNewChatMessage"


async def test_a_counted_status_fault_answers_that_status_then_recovers(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.inject_fault("notifyUserNewChatMessage", status=503, count=2, retry_after=7)
    answers = []
    for number in (1, 2, 3):
        async with http.post(
            sandbox.url + NEW_MESSAGE, data=message_form(messageNumber=str(number))
        ) as response:
            answers.append((response.status, response.headers.get("Retry-After")))
    assert answers == [(503, "7"), (503, "7"), (200, None)]
    # The faulted calls changed nothing: only the third message arrived.
    assert [m.number for m in sandbox.chat(SESSION_ID).messages] == [3]
    assert [c.fault for c in sandbox.calls] == ["status 503", "status 503", None]


async def test_a_fault_for_another_endpoint_leaves_this_one_alone(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.inject_fault("chatbot", status=500)
    status, _ = await post(http, sandbox.url + NEW_MESSAGE, message_form())
    assert status == 200


async def test_error_rate_one_fails_every_call_of_every_endpoint(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.inject_fault("*", error_rate=1.0)
    status, _ = await post(http, sandbox.url + NEW_MESSAGE, message_form())
    async with http.get(sandbox.url + "/requestChatConfig") as response:
        config_status = response.status
    assert (status, config_status) == (500, 500)
    sandbox.clear_faults()
    assert (await post(http, sandbox.url + NEW_MESSAGE, message_form()))[0] == 200


async def test_a_seeded_error_rate_is_repeatable(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    outcomes = []
    for _ in range(2):
        sandbox.reset()
        sandbox.seed_faults(42)
        sandbox.inject_fault("notifyUserNewChatMessage", error_rate=0.5)
        run = []
        for _ in range(8):
            run.append((await post(http, sandbox.url + NEW_MESSAGE, message_form()))[0])
        outcomes.append(run)
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {200, 500}


async def test_latency_delays_the_answer_past_a_short_client_timeout(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.inject_fault("notifyUserNewChatMessage", latency_ms=300)
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            sandbox.url + NEW_MESSAGE,
            data=message_form(),
            timeout=aiohttp.ClientTimeout(total=0.05),
        ):
            pass
    assert sandbox.calls[-1].fault == "latency 300 ms"


async def test_a_hang_never_answers_within_the_client_timeout(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.inject_fault("notifyUserNewChatMessage", hang_seconds=2)
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            sandbox.url + NEW_MESSAGE, data=message_form(), timeout=aiohttp.ClientTimeout(total=0.2)
        ):
            pass
    [call] = sandbox.calls
    assert call.fault == "hang 2 s" and call.status is None
    assert sandbox.chats == []


async def test_a_drop_closes_the_connection_without_an_answer(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.inject_fault("chatbot", drop=True, count=1)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(http, sandbox.url + "/api/v2/message/chatbot", {"subject": "s", "message": "m"})
    assert sandbox.calls[-1].fault == "dropped connection"
    assert sandbox.tickets == []
    status, _ = await post(
        http, sandbox.url + "/api/v2/message/chatbot", {"subject": "s", "message": "m"}
    )
    assert status == 200


async def test_process_first_applies_the_call_but_loses_the_answer(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.inject_fault("notifyUserNewChatMessage", status=502, count=1, process_first=True)
    status, _ = await post(http, sandbox.url + NEW_MESSAGE, message_form())
    assert status == 502
    assert len(sandbox.chat(SESSION_ID).messages) == 1
    assert sandbox.calls[-1].fault == "status 502, after handling the call"


async def test_faults_over_the_control_api(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    async with http.post(
        sandbox.url + "/_sandbox/faults",
        json={"endpoint": "notifyUserNewChatMessage", "status": 429},
    ) as response:
        assert response.status == 200
    assert (await post(http, sandbox.url + NEW_MESSAGE, message_form()))[0] == 429
    async with http.delete(sandbox.url + "/_sandbox/faults") as response:
        assert response.status == 200
    assert (await post(http, sandbox.url + NEW_MESSAGE, message_form()))[0] == 200


@pytest.mark.parametrize(
    "spec",
    [{"endpoint": "nope", "status": 500}, {"endpoint": "*"}, {"endpoint": "*", "error_rate": 2}],
)
async def test_a_bad_fault_is_refused(
    sandbox: Sandbox,
    http: aiohttp.ClientSession,
    spec: dict,  # type: ignore[type-arg]
) -> None:
    async with http.post(sandbox.url + "/_sandbox/faults", json=spec) as response:
        assert response.status == 400
        assert "error" in await response.json()
    assert sandbox.state.faults.faults == []
