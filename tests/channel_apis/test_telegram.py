"""Rasa's own Telegram output (aiogram 2 on Rasa 3.6, aiogram 3 on Rasa Pro) against the fake."""

import asyncio
import gc
import warnings
from typing import Any

import pytest

from tests.channel_apis import redirect
from tests.channel_apis.telegram import (
    BOT_BLOCKED,
    BOT_USERNAME,
    TOKEN,
    TelegramApi,
    too_many_requests,
    update,
    uploaded,
)
from tests.conftest import installed_version

pytest.importorskip("aiogram", reason="aiogram is not installed: Rasa's telegram channel needs it")

from rasa.core.channels.telegram import TelegramInput, TelegramOutput

AIOGRAM_3 = (installed_version("aiogram") or "").startswith("3.")
CHAT = "4242"
WEBHOOK = "https://bot.example.com/webhooks/telegram/webhook"


def bot_of(output: TelegramOutput) -> Any:
    """The aiogram Bot: Rasa 3.6's TelegramOutput is one, Rasa Pro's holds one."""
    return output.bot if AIOGRAM_3 else output


async def close(output: TelegramOutput) -> None:
    await bot_of(output).session.close()


async def output_on(api: TelegramApi) -> TelegramOutput:
    output = TelegramOutput(TOKEN)
    redirect.point_telegram_bot(bot_of(output), api.url)
    return output


async def test_rasa_sends_text_in_parts_and_an_image_to_the_customer_chat(
    telegram_api: TelegramApi,
) -> None:
    output = await output_on(telegram_api)
    try:
        await output.send_text_message(CHAT, "Hello!\n\nHow can I help?")
        await output.send_image_url(CHAT, "https://files.example.com/map.png")
    finally:
        await close(output)

    texts = [call.param("text") for call in telegram_api.calls_to("sendMessage")]
    assert texts == ["Hello!", "How can I help?"]
    (photo,) = telegram_api.calls_to("sendPhoto")
    assert (photo.recipient, photo.param("photo")) == (CHAT, "https://files.example.com/map.png")


async def test_a_document_an_upload_and_typing_reach_the_customer_chat(
    telegram_api: TelegramApi,
) -> None:
    output = await output_on(telegram_api)
    try:
        await output.send_custom_json(CHAT, {"document": "https://files.example.com/a.pdf"})
        await output.send_custom_json(CHAT, {"action": "typing"})
        if AIOGRAM_3:
            from aiogram.types import BufferedInputFile

            upload = BufferedInputFile(b"%PDF-1.4 invoice", filename="invoice.pdf")
        else:
            import io

            from aiogram.types import InputFile

            upload = InputFile(io.BytesIO(b"%PDF-1.4 invoice"), filename="invoice.pdf")
        await bot_of(output).send_document(CHAT, upload)
    finally:
        await close(output)

    by_url, by_upload = telegram_api.calls_to("sendDocument")
    assert by_url.param("document") == "https://files.example.com/a.pdf"
    sent = uploaded(by_upload, "document")
    assert sent is not None
    assert (sent.filename, sent.data) == ("invoice.pdf", b"%PDF-1.4 invoice")
    (typing,) = telegram_api.calls_to("sendChatAction")
    assert (typing.recipient, typing.param("action")) == (CHAT, "typing")


async def test_rasa_raises_when_the_customer_blocked_the_bot(telegram_api: TelegramApi) -> None:
    """Rasa's TelegramOutput lets aiogram's error through: the caller sees the refusal."""
    telegram_api.refuse(CHAT, BOT_BLOCKED)
    output = await output_on(telegram_api)
    if AIOGRAM_3:
        from aiogram.exceptions import TelegramForbiddenError as Blocked
    else:
        from aiogram.utils.exceptions import BotBlocked as Blocked
    try:
        with pytest.raises(Blocked, match="bot was blocked by the user"):
            await output.send_text_message(CHAT, "An agent is here")
    finally:
        await close(output)
    assert [call.status for call in telegram_api.calls] == [403]


async def test_rasa_raises_flood_control_with_the_seconds_to_wait(
    telegram_api: TelegramApi,
) -> None:
    telegram_api.fail_next(too_many_requests(retry_after=7), api_method="sendMessage")
    output = await output_on(telegram_api)
    if AIOGRAM_3:
        from aiogram.exceptions import TelegramRetryAfter as RetryAfter
    else:
        from aiogram.utils.exceptions import RetryAfter
    try:
        with pytest.raises(RetryAfter) as raised:
            await output.send_text_message(CHAT, "An agent is here")
        await output.send_text_message(CHAT, "Sent once the flood is over")
    finally:
        await close(output)
    # aiogram 3 names the seconds retry_after, aiogram 2 timeout
    assert (raised.value.retry_after if AIOGRAM_3 else raised.value.timeout) == 7
    assert [call.status for call in telegram_api.calls_to("sendMessage")] == [429, 200]


async def test_a_bot_with_another_token_is_unauthorized(telegram_api: TelegramApi) -> None:
    output = TelegramOutput("987654321:AAOtherTokenTheFakeDoesNotKnow000000")
    redirect.point_telegram_bot(bot_of(output), telegram_api.url)
    try:
        with pytest.raises(Exception, match="Unauthorized"):
            await output.send_text_message(CHAT, "Hi")
    finally:
        await close(output)


def test_the_update_helper_is_what_aiogram_reads_from_the_webhook() -> None:
    from aiogram.types import Update

    parsed = Update(**update(4242, "I want a human", update_id=7))
    assert parsed.update_id == 7
    assert parsed.message is not None
    assert (parsed.message.chat.id, parsed.message.text) == (4242, "I want a human")


@pytest.mark.skipif(AIOGRAM_3, reason="Rasa Pro's get_output_channel makes no call to Telegram")
async def test_rasa_36_get_output_channel_fails_inside_the_serving_loop(
    telegram_api: TelegramApi,
) -> None:
    """Rasa 3.6 runs asyncio.run(set_webhook) in get_output_channel (RasaHQ/rasa PR #13040)."""
    channel = TelegramInput(TOKEN, BOT_USERNAME, WEBHOOK)
    with redirect.telegram(telegram_api.url), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # set_webhook() never awaited
        with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
            channel.get_output_channel()
        gc.collect()
    assert telegram_api.calls == []


@pytest.mark.skipif(AIOGRAM_3, reason="Rasa Pro's get_output_channel makes no call to Telegram")
def test_rasa_36_get_output_channel_sets_the_webhook_and_leaves_a_bot_on_a_closed_loop(
    telegram_api: TelegramApi,
) -> None:
    """Outside a loop (as at start-up) it calls setWebhook; the bot it returns keeps the
    session opened in that finished loop, so its next call fails: why Rasa 3.6's telegram
    webhook answers 500 at getMe."""
    channel = TelegramInput(TOKEN, BOT_USERNAME, WEBHOOK)
    with redirect.telegram(telegram_api.url):
        output = channel.get_output_channel()
    assert [call.api_method for call in telegram_api.calls] == ["setWebhook"]
    assert telegram_api.webhook_url == WEBHOOK

    with pytest.raises(RuntimeError, match="Event loop is closed"):
        asyncio.run(output.get_me())
    assert len(telegram_api.calls) == 1


@pytest.mark.skipif(not AIOGRAM_3, reason="Rasa 3.6's get_output_channel runs asyncio.run")
async def test_rasa_pro_get_output_channel_makes_no_call_and_sends_in_the_loop(
    telegram_api: TelegramApi,
) -> None:
    channel = TelegramInput(TOKEN, BOT_USERNAME, WEBHOOK)
    with redirect.telegram(telegram_api.url):
        output = channel.get_output_channel()
    assert telegram_api.calls == []
    try:
        await output.send_text_message(CHAT, "An agent is here")
    finally:
        await close(output)
    (sent,) = telegram_api.calls
    assert (sent.api_method, sent.recipient, sent.param("text")) == (
        "sendMessage",
        CHAT,
        "An agent is here",
    )
