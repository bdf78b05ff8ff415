"""Omnidesk's calls to the hookpoints: what is honoured, what is refused, what is logged."""

import logging
from typing import Any, Dict, Optional, Tuple

import aiohttp
import pytest

from tests.channel.conftest import SECRET, callback_setup


async def post(
    url: str,
    *,
    data: Any = None,
    json: Any = None,
    params: Optional[Dict[str, str]] = None,
) -> Tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.post(
        url, data=data, json=json, params=params
    ) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def form(**fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for key, value in fields.items():
        data.add_field(key, value)
    return data


async def test_message_fields_are_read_from_json_urlencoded_and_query_in_any_case() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("hook-1")
        url = setup.server.hook_url("messageForCustomer", chat)
        assert (await post(url, json={"SessionID": chat, "Message": "one"}))[0] == 200
        assert (await post(url, data={"sessionid": chat, "message": "two"}))[0] == 200
        status, kind, body = await post(url, params={"sessionID": chat, "message": "three"})
        assert (status, body) == (200, "ok") and kind.startswith("text/plain")
        await setup.customer.wait_for(
            lambda r: (
                [
                    m.get("text")
                    for m in r
                    if "agent" not in m and m.get("text") in {"one", "two", "three"}
                ]
                == ["one", "two", "three"]
            )
        )


async def test_missing_or_malformed_fields_answer_400_naming_the_field() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("hook-2")
        cases = [
            ("messageForCustomer", {"message": "hi"}, "sessionID: required"),
            ("messageForCustomer", {"sessionID": chat}, "message: required"),
            ("messageForCustomer", {"sessionID": "bad_id!", "message": "x"}, "sessionID:"),
            ("typingIndicatorForCustomer", {"SessionID": chat, "Typing": "maybe"}, "Typing:"),
            ("typingIndicatorForCustomer", {"SessionID": chat}, "Typing: required"),
            ("uploadForCustomer", {"sessionID": chat}, "file: required"),
            ("endSession", {}, "sessionID: required"),
        ]
        for name, fields, named in cases:
            status, kind, body = await post(setup.server.hook_url(name, chat), data=form(**fields))
            assert status == 400, (name, fields, body)
            assert kind.startswith("application/json")
            assert named in body, (name, body)
            assert "Traceback" not in body
        status, _, body = await post(
            setup.server.hook_url("messageForCustomer", chat),
            data=b"{not json",
        )
        assert status in (400, 404)
        assert setup.customer.texts() == ["Connecting you to a person."]
        assert not setup.server.sandbox.chat(chat).ended


async def test_typing_accepts_true_false_one_zero_in_any_case() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("hook-3")
        url = setup.server.hook_url("typingIndicatorForCustomer", chat)
        for raw in ("TRUE", "false", "1", "0"):
            assert (await post(url, data=form(SessionID=chat, Typing=raw)))[:1] == (200,)
        await setup.customer.wait_for(
            lambda r: [m["typing"] for m in r if "typing" in m] == [True, False, True, False]
        )


async def test_wrong_secret_unknown_or_ended_session_deliver_nothing() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("hook-4")
        wrong = setup.server.hook_url("messageForCustomer", secret="x" * len(SECRET))
        assert (await post(wrong, data=form(sessionID=chat, message="forged")))[0] == 404
        stale_chat = "rasa-00000000000000000000000000000000"
        status, _, body = await post(
            setup.server.hook_url("messageForCustomer", stale_chat),
            data=form(sessionID=stale_chat, message="stale"),
        )
        assert status == 404 and "sessionID" in body
        await setup.server.sandbox.agent_end(chat)
        await setup.customer.wait_for(
            lambda r: "Back with the bot (ended_by_agent)." in [m.get("text") for m in r]
        )
        ended = setup.server.hook_url("messageForCustomer", chat)
        assert (await post(ended, data=form(sessionID=chat, message="after the end")))[0] == 404
        assert (await post(setup.server.hook_url("endSession", chat), data=form(sessionID=chat)))[
            0
        ] == 404
        await setup.server.relay.wait_idle()
        texts = setup.customer.texts()
        assert "forged" not in texts and "stale" not in texts and "after the end" not in texts
        assert texts.count("Back with the bot (ended_by_agent).") == 1


async def test_too_large_bodies_answer_413() -> None:
    async with callback_setup(max_upload_bytes=1000) as setup:
        chat = await setup.hand_over("hook-5")
        big = form(sessionID=chat, message="x" * (2 * 1024 * 1024))
        assert (await post(setup.server.hook_url("messageForCustomer", chat), data=big))[0] == 413
        upload = aiohttp.FormData()
        upload.add_field("sessionID", chat)
        upload.add_field(
            "file", b"0" * 5000, filename="big.bin", content_type="application/octet-stream"
        )
        status, _, body = await post(setup.server.hook_url("uploadForCustomer", chat), data=upload)
        assert status == 413 and "file" in body
        await setup.server.relay.wait_idle()
        assert setup.customer.texts() == ["Connecting you to a person."]


async def test_the_secret_never_appears_in_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        async with callback_setup() as setup:
            chat = await setup.hand_over("hook-6")
            await setup.server.sandbox.agent_reply(chat, "hi")
            await post(
                setup.server.hook_url("messageForCustomer", secret="wrong-secret-value"),
                data=form(sessionID=chat, message="x"),
            )
            await post(
                setup.server.hook_url("typingIndicatorForCustomer", chat),
                data=form(SessionID=chat, Typing="nope"),
            )
            await setup.server.sandbox.agent_end(chat)
            await setup.customer.wait_for(
                lambda r: "Back with the bot (ended_by_agent)." in [m.get("text") for m in r]
            )
    text = "\n".join(
        record.getMessage() + " " + str(getattr(record, "request", "")) for record in caplog.records
    )
    assert any("hook/***" in str(getattr(r, "request", "")) for r in caplog.records), (
        "no access log captured"
    )
    assert SECRET not in text
    assert setup.server.settings.hookpoint_token(chat) not in text


async def test_the_global_secret_alone_opens_no_chat() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("hook-7")
        for name, fields in (
            ("messageForCustomer", {"sessionID": chat, "message": "forged"}),
            ("endSession", {"sessionID": chat}),
        ):
            status, _, _ = await post(
                setup.server.hook_url(name, secret=SECRET), data=form(**fields)
            )
            assert status == 404
        await setup.server.relay.wait_idle()
        assert "forged" not in setup.customer.texts()
        assert await setup.server.relay.handoff_of("hook-7") is not None


async def test_one_chats_token_opens_no_other_chat() -> None:
    async with callback_setup() as setup:
        mine = await setup.hand_over("hook-8")
        theirs = await setup.hand_over("hook-9")
        url = setup.server.hook_url("messageForCustomer", mine)
        assert (await post(url, data=form(sessionID=theirs, message="forged")))[0] == 404
        end = setup.server.hook_url("endSession", mine)
        assert (await post(end, data=form(sessionID=theirs)))[0] == 404
        assert (await post(url, data=form(sessionID=mine, message="mine")))[0] == 200
        await setup.server.relay.wait_idle()
        assert "forged" not in setup.customer.texts()
        assert await setup.server.relay.handoff_of("hook-9") is not None


async def test_every_call_for_a_chat_carries_that_chats_own_chat_server() -> None:
    async with callback_setup() as setup:
        chat = await setup.hand_over("hook-10")
        await setup.say("hook-10", "a customer turn")
        expected = setup.server.settings.chat_server_for(chat)
        assert SECRET not in expected
        calls = [c for c in setup.server.sandbox.calls if c.fields.get("chatServer")]
        assert calls and {c.fields["chatServer"] for c in calls} == {expected}
