"""What every fake does the same way: serving, recording, waiting and programmed refusals."""

import asyncio

import aiohttp
import pytest

from tests.channel_apis.telegram import (
    BOT_BLOCKED,
    CHAT_NOT_FOUND,
    TOKEN,
    TelegramApi,
    too_many_requests,
)


def method_url(api: TelegramApi, method: str) -> str:
    return f"{api.url}/bot{TOKEN}/{method}"


async def send(http: aiohttp.ClientSession, api: TelegramApi, chat: str, text: str) -> int:
    form = {"chat_id": chat, "text": text}
    async with http.post(method_url(api, "sendMessage"), data=form) as answer:
        await answer.read()
        return answer.status


async def test_it_serves_on_loopback_only_inside_its_context(http: aiohttp.ClientSession) -> None:
    async with TelegramApi() as api:
        assert api.url.startswith("http://127.0.0.1:")
        async with http.post(method_url(api, "getMe")) as answer:
            assert (answer.status, (await answer.json())["ok"]) == (200, True)

    with pytest.raises(aiohttp.ClientConnectionError):
        await http.post(method_url(api, "getMe"))


async def test_wait_for_finds_a_call_already_made_and_one_still_to_come(
    http: aiohttp.ClientSession, telegram_api: TelegramApi
) -> None:
    await send(http, telegram_api, "1", "first")
    earlier = await telegram_api.wait_for(lambda call: call.param("text") == "first")

    later = asyncio.ensure_future(
        telegram_api.wait_for(lambda call: call.param("text") == "second")
    )
    await asyncio.sleep(0)
    assert not later.done()
    await send(http, telegram_api, "1", "second")

    assert (earlier.recipient, (await later).recipient) == ("1", "1")


async def test_wait_for_says_what_did_arrive_when_nothing_matches(
    http: aiohttp.ClientSession, telegram_api: TelegramApi
) -> None:
    await send(http, telegram_api, "1", "hello")

    with pytest.raises(AssertionError, match="sendMessage, to 1"):
        await telegram_api.wait_for(lambda call: call.api_method == "sendPhoto", timeout=0.2)


async def test_fail_next_answers_the_next_calls_to_one_method_then_succeeds(
    http: aiohttp.ClientSession, telegram_api: TelegramApi
) -> None:
    telegram_api.fail_next(too_many_requests(), api_method="sendMessage", times=2)

    async with http.post(method_url(telegram_api, "getMe")) as answer:
        assert answer.status == 200
    statuses = [await send(http, telegram_api, "1", "x") for _ in range(3)]

    assert statuses == [429, 429, 200]


async def test_refuse_answers_one_recipient_until_accepted(
    http: aiohttp.ClientSession, telegram_api: TelegramApi
) -> None:
    telegram_api.refuse("1", BOT_BLOCKED)
    telegram_api.refuse("2", CHAT_NOT_FOUND)

    assert [await send(http, telegram_api, chat, "x") for chat in ("1", "2", "3")] == [
        403,
        400,
        200,
    ]
    telegram_api.accept("1")
    assert await send(http, telegram_api, "1", "x") == 200
    assert [call.status for call in telegram_api.calls] == [403, 400, 200, 200]


async def test_a_multipart_body_is_kept_as_fields_and_files(
    http: aiohttp.ClientSession, telegram_api: TelegramApi
) -> None:
    form = aiohttp.FormData()
    form.add_field("chat_id", "1")
    form.add_field("caption", "Ihre Rechnung: 12 €")
    form.add_field("document", b"%PDF-1.4", filename="invoice.pdf", content_type="application/pdf")

    async with http.post(method_url(telegram_api, "sendDocument"), data=form) as answer:
        result = (await answer.json())["result"]

    (call,) = telegram_api.calls
    assert dict(call.form) == {"chat_id": "1", "caption": "Ihre Rechnung: 12 €"}
    document = call.files["document"]
    assert (document.filename, document.content_type, document.data) == (
        "invoice.pdf",
        "application/pdf",
        b"%PDF-1.4",
    )
    assert result["document"]["file_name"] == "invoice.pdf"


async def test_an_unknown_path_and_a_wrong_token_get_the_services_answers(
    http: aiohttp.ClientSession, telegram_api: TelegramApi
) -> None:
    async with http.post(method_url(telegram_api, "noSuchMethod")) as answer:
        assert (answer.status, (await answer.json())["description"]) == (404, "Not Found")
    async with http.post(f"{telegram_api.url}/bot1:wrong/getMe") as answer:
        assert (answer.status, (await answer.json())["description"]) == (401, "Unauthorized")
    assert [call.api_method for call in telegram_api.calls] == ["noSuchMethod", "getMe"]
