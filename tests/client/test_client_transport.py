"""The transport seam: what the client hands its transport, and how the aiohttp one behaves.

The first tests use a MockTransport; the aiohttp transport's own tests run
against the fake Omnidesk on loopback, since the network is their point.
"""

import asyncio
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from connectors.omnidesk.client import USER_AGENT, OmnideskClient, OmnideskUnavailable
from connectors.omnidesk.transport import (
    MAX_ANSWER_BYTES,
    AiohttpTransport,
    MockTransport,
    Request,
    Response,
    Timeout,
    TransportError,
    TransportTimeout,
)
from tests.client.fake_omnidesk import API_KEY, SESSION_ID, Reply, settings_for

END_CHAT = "/api/v2/message/notifyUserEndChat"


# --- what the client hands its transport ---------------------------------------------


async def test_a_call_is_one_prepared_request(scripted, make_scripted_client):
    client = make_scripted_client(api_key=API_KEY, connect_timeout=1, request_timeout=2)

    await client.notify_user_end_chat(chat_session_id=SESSION_ID)

    (request,) = scripted.requests
    assert request.method == "POST"
    assert request.path == END_CHAT
    assert request.query == {"apiKey": API_KEY}
    assert request.headers["User-Agent"] == USER_AGENT
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert b'name="chatSessionID"' in request.body
    assert (request.timeout.connect, request.timeout.total) == (1, 2)


async def test_a_get_has_no_body_and_no_content_type(scripted, make_scripted_client):
    await make_scripted_client().request_chat_config()

    (request,) = scripted.requests
    assert request.method == "GET"
    assert request.body == b""
    assert "Content-Type" not in request.headers


async def test_closing_the_client_closes_its_transport(scripted):
    transport = scripted.transport()
    client = OmnideskClient(settings_for(scripted), transport=transport)

    async with client:
        await client.notify_user_end_chat(chat_session_id=SESSION_ID)

    assert client.closed and transport.closed
    with pytest.raises(RuntimeError, match="closed"):
        await client.notify_user_end_chat(chat_session_id=SESSION_ID)


async def test_a_mock_transport_takes_a_plain_or_an_async_handler():
    request = Request("GET", "https://omnidesk.test/", {}, b"", Timeout(total=1, connect=1))

    async def later(_: Request) -> Response:
        return Response(204)

    assert (await MockTransport(lambda _: Response(200)).handle_request(request)).status == 200
    assert (await MockTransport(later).handle_request(request)).status == 204
    assert Response(200, {"Retry-After": "3"}).header("retry-after") == "3"


async def test_a_mock_transport_times_out_like_a_real_one():
    async def hang(_: Request) -> Response:
        await asyncio.sleep(10)
        return Response(200)

    request = Request("GET", "https://omnidesk.test/", {}, b"", Timeout(total=0.1, connect=0.1))
    started = time.monotonic()
    with pytest.raises(TransportTimeout):
        await MockTransport(hang).handle_request(request)
    assert time.monotonic() - started < 0.5


# --- the aiohttp transport on loopback -------------------------------------------------


def request_to(url: str, total: float = 2.0, method: str = "GET") -> Request:
    return Request(method, url, {}, b"", Timeout(total=total, connect=total))


async def test_the_aiohttp_transport_makes_its_session_at_first_use_and_closes_it(omnidesk):
    transport = AiohttpTransport()
    assert not transport.closed

    answer = await transport.handle_request(request_to(omnidesk.url + "/chat/requestChatConfig"))
    await transport.close()

    assert answer.status == 200
    assert answer.header("content-type") == "application/json; charset=utf-8"
    assert transport.closed
    with pytest.raises(RuntimeError, match="closed"):
        await transport.handle_request(request_to(omnidesk.url + "/"))


async def test_the_aiohttp_transport_follows_no_redirect(omnidesk):
    omnidesk.script("/moved", Reply(status=302, headers={"Location": "/elsewhere"}, body=""))
    transport = AiohttpTransport()
    try:
        answer = await transport.handle_request(request_to(omnidesk.url + "/moved"))
    finally:
        await transport.close()

    assert answer.status == 302
    assert [request.path for request in omnidesk.requests] == ["/moved"]


async def test_a_dropped_connection_is_a_transport_error(omnidesk):
    omnidesk.script("/drop", Reply(drop=True))
    transport = AiohttpTransport()
    try:
        with pytest.raises(TransportError) as caught:
            # A POST, as every Omnidesk call is: aiohttp 3.10 on retries an idempotent
            # GET once on a dropped connection by itself, and would get the next answer.
            await transport.handle_request(request_to(omnidesk.url + "/drop", method="POST"))
    finally:
        await transport.close()

    assert not isinstance(caught.value, TransportTimeout)


async def test_an_unreachable_host_is_a_transport_error():
    transport = AiohttpTransport()
    try:
        with pytest.raises(TransportError) as caught:
            await transport.handle_request(request_to("http://127.0.0.1:9/"))
    finally:
        await transport.close()

    assert "127.0.0.1:9" in str(caught.value)


async def test_a_hung_server_is_a_timeout_within_the_bound(omnidesk):
    omnidesk.script("/hang", Reply(hang=10))
    transport = AiohttpTransport()
    started = time.monotonic()
    try:
        with pytest.raises(TransportTimeout):
            await transport.handle_request(request_to(omnidesk.url + "/hang", total=0.3))
    finally:
        await transport.close()

    assert time.monotonic() - started < 0.3 + 0.5


async def test_an_answer_past_the_cap_is_cut_off():
    async def huge(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * (3 * MAX_ANSWER_BYTES))

    app = web.Application()
    app.router.add_get("/huge", huge)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    transport = AiohttpTransport()
    try:
        answer = await transport.handle_request(request_to(str(server.make_url("/huge"))))
    finally:
        await transport.close()
        await server.close()

    assert MAX_ANSWER_BYTES < len(answer.body) < 2 * MAX_ANSWER_BYTES


async def test_an_unreachable_omnidesk_over_the_wire_is_unavailable(make_client, schedule):
    client = make_client(api_url="http://127.0.0.1:9", max_attempts=2)

    with pytest.raises(OmnideskUnavailable) as caught:
        await client.notify_user_end_chat(chat_session_id=SESSION_ID)

    assert caught.value.status is None
    assert caught.value.attempts == 2
