"""A chat with an agent survives a restart of Rasa when the switchboard is in Redis."""

from pathlib import Path

import pytest

from omnidesk_sandbox.testing import running_sandbox
from tests.channel.conftest import (
    ACCOUNT_TOKEN,
    SERVER_TOKEN,
    CallbackSetup,
    callback_receiver,
    channel_server,
)
from tests.e2e.stack import free_port


@pytest.mark.redis
async def test_the_agent_still_reaches_the_customer_after_a_restart(
    redis_url: str, tmp_path: Path
) -> None:
    async with running_sandbox(
        chat_account_token=ACCOUNT_TOKEN, chat_server_token=SERVER_TOKEN
    ) as sandbox, callback_receiver() as customer:
        port = free_port()
        channels = {"callback": {"url": customer.url}}
        async with channel_server(
            channels, sandbox=sandbox, port=port, switchboard_url=redis_url, files_dir=str(tmp_path)
        ) as before:
            chat = await CallbackSetup(server=before, customer=customer).hand_over("cust-r")

        async with channel_server(
            channels, sandbox=sandbox, port=port, switchboard_url=redis_url, files_dir=str(tmp_path)
        ) as after:
            result = await sandbox.agent_reply(chat, "Still here", name="Anna")
            assert (result.status, result.body) == (200, "ok")
            await customer.wait_for(lambda r: [m for m in r if m.get("text") == "Still here"])

            assert (
                await CallbackSetup(server=after, customer=customer).say("cust-r", "thanks") == 200
            )
            assert [(m.number, m.text) for m in sandbox.chat(chat).messages][-1] == (2, "thanks")
            assert after.bot.seen == []  # the turn went to the agent, not the bot


async def test_without_redis_a_restart_forgets_the_chat() -> None:
    async with running_sandbox(
        chat_account_token=ACCOUNT_TOKEN, chat_server_token=SERVER_TOKEN
    ) as sandbox, callback_receiver() as customer:
        port = free_port()
        channels = {"callback": {"url": customer.url}}
        async with channel_server(channels, sandbox=sandbox, port=port) as before:
            chat = await CallbackSetup(server=before, customer=customer).hand_over("cust-m")

        async with channel_server(channels, sandbox=sandbox, port=port):
            result = await sandbox.agent_reply(chat, "Still here", name="Anna")
            assert result.status == 404
            assert "Still here" not in customer.texts()
