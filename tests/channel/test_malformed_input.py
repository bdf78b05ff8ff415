"""Malformed requests to the connector's routes: a 4xx each, one log line, no traceback."""

import asyncio
import logging
from typing import Tuple

import aiohttp
import pytest

from tests.channel.conftest import callback_setup


async def raw_request(url: str, head: str, body: bytes = b"") -> Tuple[int, bytes]:
    """Send ``head`` and ``body`` as they are (aiohttp would fix a bad Content-Length)."""
    host, port = url.split("//", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()
    status_line = data.split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), data


@pytest.mark.parametrize("length", ["-1", "abc", "1e3", "+5", " "])
async def test_a_content_length_that_is_no_whole_number_is_refused_with_400(length: str) -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("cl-1")
        path = setup.server.hook_url("messageForCustomer", chat).split("/", 3)[3]
        head = (
            f"POST /{path} HTTP/1.1\nHost: x\nContent-Type: application/json\n"
            f"Content-Length: {length}\nConnection: close\n"
        )
        status, _ = await raw_request(setup.server.url, head, b"{}")
        assert status == 400
        # The process still answers: nothing hangs behind the refused request.
        async with aiohttp.ClientSession() as session, session.get(
            f"{setup.server.url}/webhooks/omnidesk/"
        ) as resp:
            assert resp.status == 200


async def test_json_nested_a_thousand_levels_deep_is_a_400_on_every_route() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("deep-1")
        deep = b"[" * 1500 + b"]" * 1500
        deep_object = b'{"a":' * 3000 + b"1" + b"}" * 3000
        urls = [
            setup.server.hook_url(name, chat)
            for name in (
                "messageForCustomer",
                "uploadForCustomer",
                "typingIndicatorForCustomer",
                "endSession",
            )
        ] + [
            f"{setup.server.url}/webhooks/omnidesk/upload",
            f"{setup.server.url}/webhooks/omnidesk/event",
        ]
        async with aiohttp.ClientSession() as session:
            for url in urls:
                for body in (deep, deep_object):
                    async with session.post(
                        url, data=body, headers={"Content-Type": "application/json"}
                    ) as resp:
                        assert resp.status == 400, (url, resp.status, await resp.text())


async def test_a_malformed_form_is_one_log_line_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("form-1")
        url = setup.server.hook_url("messageForCustomer", chat)
        # A header line without its colon makes Sanic's form parser raise.
        body = b"--b\r\nContent-Disposition form-data\r\n\r\nx\r\n--b--\r\n"
        with caplog.at_level(logging.INFO):
            async with aiohttp.ClientSession() as session, session.post(
                url, data=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
            ) as resp:
                assert resp.status == 400
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
        assert [r for r in caplog.records if "malformed form" in r.getMessage()]


@pytest.mark.parametrize(
    "path",
    [
        "/webhooks/omnidesk/upload/",
        "/webhooks/omnidesk/event/",
    ],
)
async def test_a_trailing_slash_is_not_the_route(path: str) -> None:
    async with callback_setup() as setup, aiohttp.ClientSession() as session, session.post(
        f"{setup.server.url}{path}", data={"sender": "x"}
    ) as resp:
        assert resp.status == 404


async def test_a_trailing_slash_after_the_hookpoint_name_is_404_and_delivers_nothing() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("slash-1")
        url = setup.server.hook_url("messageForCustomer", chat) + "/"
        async with aiohttp.ClientSession() as session, session.post(
            url, data={"sessionID": chat, "message": "slashed"}
        ) as resp:
            assert resp.status == 404
        await asyncio.sleep(0.2)
        assert "slashed" not in setup.customer.texts()


async def test_content_length_minus_one_on_rasas_own_channel_route_is_refused_too() -> None:
    # The guard sits on the server's request signal: the wrapped channel's routes
    # (and Rasa's own, in rasa run) are covered, not only ours.
    async with callback_setup() as setup:
        head = (
            "POST /webhooks/callback/webhook HTTP/1.1\nHost: x\n"
            "Content-Type: application/json\nContent-Length: -1\nConnection: close\n"
        )
        status, _ = await raw_request(setup.server.url, head, b"{}")
        assert status == 400
        assert await setup.say("cl-2", "still answering") == 200
