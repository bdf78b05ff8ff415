"""When the client tries again, how long it waits, and when it gives up.

Omnidesk is scripted behind a MockTransport: no socket, real time.
"""

import email.utils
import logging
import random
import time

import pytest

from connectors.omnidesk.client import (
    OmnideskClient,
    OmnideskHTTPError,
    OmnideskUnavailable,
)
from tests.client.fake_omnidesk import ACCOUNT_TOKEN, SESSION_ID, Reply

END_CHAT = "/api/v2/message/notifyUserEndChat"


async def end_chat(client: OmnideskClient):
    return await client.notify_user_end_chat(chat_session_id=SESSION_ID)


async def test_two_server_errors_then_success_succeeds_on_the_third_try(
    scripted, make_scripted_client, schedule
):
    scripted.script(END_CHAT, Reply(status=500), Reply(status=500))

    result = await end_chat(make_scripted_client(backoff_base=0.01, backoff_max=1))

    assert result.ticket_id == 12312
    assert len(scripted.requests) == 3
    assert schedule.ranges == [(0.0, 0.01), (0.0, 0.02)]
    assert schedule.sleeps == [0.01, 0.02]


async def test_too_many_requests_waits_at_least_retry_after(
    scripted, make_scripted_client, schedule
):
    schedule.fraction = 0.0  # no jitter: any wait comes from Retry-After
    scripted.script(END_CHAT, Reply(status=429, headers={"Retry-After": "1"}))

    await end_chat(make_scripted_client())

    first, second = scripted.requests
    # The event loop's timer may fire a hair early by the wall clock the server reads.
    assert second.arrived - first.arrived >= 0.95
    assert schedule.sleeps == [1.0]


async def test_retry_after_as_an_http_date_is_honoured(scripted, make_scripted_client, schedule):
    schedule.fraction = 0.0
    schedule.time_scale = 0.0
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    scripted.script(END_CHAT, Reply(status=503, headers={"Retry-After": when}))

    await end_chat(make_scripted_client())

    (delay,) = schedule.sleeps
    assert 1.5 < delay <= 3.0


async def test_jitter_longer_than_retry_after_is_kept(scripted, make_scripted_client, schedule):
    scripted.script(END_CHAT, Reply(status=429, headers={"Retry-After": "0"}))

    await end_chat(make_scripted_client(backoff_base=0.2, backoff_max=1))

    assert schedule.sleeps == [0.2]


async def test_retry_after_beyond_the_budget_fails_at_once(
    scripted, make_scripted_client, schedule
):
    scripted.script(
        END_CHAT,
        Reply(status=503, headers={"Retry-After": "60"}, body={"message": "maintenance"}),
    )

    with pytest.raises(OmnideskUnavailable) as caught:
        await end_chat(make_scripted_client(retry_budget=10))

    assert len(scripted.requests) == 1
    assert schedule.sleeps == []
    error = caught.value
    assert error.status == 503
    assert error.omnidesk_message == "maintenance"
    assert error.retryable is True
    assert "retry after 60 s" in str(error)


async def test_a_bad_request_is_tried_once(scripted, make_scripted_client, schedule):
    scripted.script(END_CHAT, Reply(status=400, body={"status": "error", "message": "bad"}))

    with pytest.raises(OmnideskHTTPError) as caught:
        await end_chat(make_scripted_client())

    assert len(scripted.requests) == 1
    assert schedule.sleeps == []
    assert caught.value.retryable is False


@pytest.mark.parametrize("status", [401, 403, 404, 409, 422])
async def test_no_client_error_but_429_is_retried(scripted, make_scripted_client, schedule, status):
    scripted.script(END_CHAT, Reply(status=status))

    with pytest.raises(OmnideskHTTPError):
        await end_chat(make_scripted_client())

    assert len(scripted.requests) == 1


async def test_an_error_body_with_200_is_not_retried(scripted, make_scripted_client, schedule):
    scripted.script(END_CHAT, Reply(status=200, body={"status": "error", "message": "nope"}))

    with pytest.raises(OmnideskHTTPError):
        await end_chat(make_scripted_client())

    assert len(scripted.requests) == 1


async def test_a_hung_server_times_out_within_the_configured_bound(
    scripted, make_scripted_client, schedule
):
    scripted.script(END_CHAT, Reply(hang=10), Reply(hang=10))
    client = make_scripted_client(
        request_timeout=0.3, max_attempts=2, backoff_base=0.05, backoff_max=0.05
    )

    with pytest.raises(OmnideskUnavailable) as caught:
        await end_chat(client)

    assert len(scripted.requests) == 2
    assert caught.value.status is None
    assert "no answer within 0.3 s" in str(caught.value)
    assert "after 2 attempts" in str(caught.value)


async def test_a_hung_call_ends_within_two_timeouts_and_one_wait(scripted, make_scripted_client):
    scripted.script(END_CHAT, Reply(hang=10), Reply(hang=10))
    client = make_scripted_client(
        request_timeout=0.3, max_attempts=2, backoff_base=0.05, backoff_max=0.05
    )

    started = time.monotonic()
    with pytest.raises(OmnideskUnavailable):
        await end_chat(client)
    elapsed = time.monotonic() - started

    assert 0.6 <= elapsed < 0.6 + 0.05 + 0.5


async def test_attempts_and_waits_stay_inside_the_documented_bounds(
    scripted, make_scripted_client, schedule
):
    scripted.script(END_CHAT, *[Reply(status=503)] * 5)

    with pytest.raises(OmnideskUnavailable) as caught:
        await end_chat(make_scripted_client(max_attempts=5, backoff_base=0.01, backoff_max=0.04))

    assert len(scripted.requests) == 5
    assert caught.value.attempts == 5
    assert caught.value.status == 503
    # sleep = uniform(0, min(backoff_max, backoff_base * 2**n)), n = 0 for the first wait
    assert schedule.ranges == [(0.0, 0.01), (0.0, 0.02), (0.0, 0.04), (0.0, 0.04)]
    assert len(schedule.sleeps) == 4


async def test_real_jitter_stays_between_zero_and_the_cap(scripted, make_scripted_client, schedule):
    asked = []

    class Recording(random.Random):
        def uniform(self, a, b):
            value = super().uniform(a, b)
            asked.append((a, b, value))
            return value

    scripted.script(END_CHAT, *[Reply(status=502)] * 4)
    settings = make_scripted_client(max_attempts=4, backoff_base=0.02, backoff_max=0.05).settings
    async with OmnideskClient(
        settings, rng=Recording(7), sleep=schedule.sleep, transport=scripted.transport()
    ) as client:
        with pytest.raises(OmnideskUnavailable):
            await end_chat(client)

    assert [(a, b) for a, b, _ in asked] == [(0.0, 0.02), (0.0, 0.04), (0.0, 0.05)]
    assert all(0.0 <= value <= b for _, b, value in asked)
    assert schedule.sleeps == [value for _, _, value in asked]


async def test_a_dropped_connection_is_retried(scripted, make_scripted_client, schedule):
    scripted.script(END_CHAT, Reply(drop=True))

    result = await end_chat(make_scripted_client())

    assert result.ticket_id == 12312
    assert len(scripted.requests) == 2
    assert len(schedule.sleeps) == 1


async def test_an_unreachable_omnidesk_is_unavailable(scripted, make_scripted_client, schedule):
    scripted.unreachable = True
    client = make_scripted_client(max_attempts=2)

    with pytest.raises(OmnideskUnavailable) as caught:
        await end_chat(client)

    assert caught.value.status is None
    assert caught.value.attempts == 2
    assert "notifyUserEndChat" in str(caught.value)


async def test_an_exhausted_budget_raises_unavailable(scripted, make_scripted_client, schedule):
    scripted.script(END_CHAT, *[Reply(status=500)] * 20)
    client = make_scripted_client(
        max_attempts=10, retry_budget=0.5, backoff_base=0.2, backoff_max=0.2
    )

    with pytest.raises(OmnideskUnavailable) as caught:
        await end_chat(client)

    assert "retry budget of 0.5 s spent" in str(caught.value)
    assert 1 < len(scripted.requests) < 10
    assert sum(schedule.sleeps) < 0.5


async def test_the_whole_call_stays_within_the_budget(scripted, make_scripted_client):
    scripted.script(END_CHAT, *[Reply(status=500)] * 20)
    client = make_scripted_client(
        max_attempts=10, retry_budget=0.5, backoff_base=0.2, backoff_max=0.2
    )

    started = time.monotonic()
    with pytest.raises(OmnideskUnavailable):
        await end_chat(client)
    elapsed = time.monotonic() - started

    assert elapsed < 0.5 + 0.3


async def test_the_budget_also_bounds_a_hung_attempt(scripted, make_scripted_client):
    scripted.script(END_CHAT, Reply(hang=10))
    client = make_scripted_client(request_timeout=5, retry_budget=0.4)

    started = time.monotonic()
    with pytest.raises(OmnideskUnavailable):
        await end_chat(client)
    elapsed = time.monotonic() - started

    assert elapsed < 0.4 + 0.3
    (request,) = scripted.requests
    assert request.timeout.total <= 0.4


async def test_each_retry_is_one_warning_and_each_call_one_debug_line(
    scripted, make_scripted_client, caplog
):
    caplog.set_level(logging.DEBUG, logger="connectors.omnidesk.client")
    scripted.script(END_CHAT, Reply(status=500), Reply(status=503))

    await end_chat(make_scripted_client())

    records = [r for r in caplog.records if r.name == "connectors.omnidesk.client"]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    debugs = [r for r in records if r.levelno == logging.DEBUG]
    assert len(warnings) == 2
    assert "attempt 1 of 4 failed (HTTP 500: scripted 500)" in warnings[0].getMessage()
    assert SESSION_ID in warnings[0].getMessage()
    assert len(debugs) == 1
    line = debugs[0].getMessage()
    assert "notifyUserEndChat" in line
    assert "status=200" in line
    assert "attempt=3" in line
    assert f"chat_session_id={SESSION_ID}" in line
    assert all(ACCOUNT_TOKEN not in r.getMessage() for r in records)


async def test_each_attempt_gets_the_configured_timeouts_cut_to_the_budget_left(
    scripted, make_scripted_client, schedule
):
    schedule.fraction = 0.0
    scripted.script(END_CHAT, Reply(status=503, headers={"Retry-After": "0.3"}))
    client = make_scripted_client(connect_timeout=1, request_timeout=2, retry_budget=0.5)

    await end_chat(client)

    first, second = scripted.requests
    assert (first.timeout.total, first.timeout.connect) == (pytest.approx(0.5, abs=0.05),) * 2
    assert second.timeout.total == pytest.approx(0.2, abs=0.05)
    assert second.timeout.connect == second.timeout.total


async def test_unreadable_retry_after_falls_back_to_the_jitter(
    scripted, make_scripted_client, schedule
):
    scripted.script(END_CHAT, Reply(status=503, headers={"retry-after": "soon"}))

    await end_chat(make_scripted_client(backoff_base=0.02, backoff_max=1))

    assert schedule.sleeps == [0.02]
