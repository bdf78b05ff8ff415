"""What changes when Rasa runs as several instances: start-up checks, the sweeper, files."""

import os
import time
from pathlib import Path
from typing import Any, Dict

import aiohttp
import pytest

from connectors.omnidesk.channel.input import ChannelConfigError, OmnideskInput
from omnidesk_sandbox.testing import Sandbox
from tests.channel.conftest import (
    ACCOUNT_TOKEN,
    SECRET,
    SERVER_TOKEN,
    CallbackSetup,
    callback_on_two_instances,
    callback_setup,
)


def credentials(**settings: Any) -> Dict[str, Any]:
    return {
        "customer_channels": {"callback": {"url": "http://127.0.0.1:9/bot"}},
        "public_url": "https://bot.example.com",
        "hookpoint_secret": SECRET,
        "chat_account_token": ACCOUNT_TOKEN,
        "chat_server_token": SERVER_TOKEN,
        **settings,
    }


def test_the_memory_switchboard_with_several_sanic_workers_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SANIC_WORKERS", "4")
    with pytest.raises(ChannelConfigError) as refused:
        OmnideskInput.from_credentials(credentials())
    assert "SANIC_WORKERS=4" in str(refused.value)
    assert "OMNIDESK_SWITCHBOARD_URL" in str(refused.value)
    OmnideskInput.from_credentials(
        credentials(switchboard_url="redis://127.0.0.1:6379/0", files_dir="/tmp/files")
    )


def test_a_redis_switchboard_without_a_files_dir_is_refused() -> None:
    with pytest.raises(ChannelConfigError) as refused:
        OmnideskInput.from_credentials(credentials(switchboard_url="redis://127.0.0.1:6379/0"))
    assert "OMNIDESK_FILES_DIR" in str(refused.value)


@pytest.mark.redis
async def test_a_redis_switchboard_with_rasas_in_memory_lock_store_is_warned_about(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="connectors.omnidesk.channel.startup"):
        async with callback_setup(switchboard_url=redis_url, files_dir=str(tmp_path)):
            pass
    assert any("lock store is in memory" in r.getMessage() for r in caplog.records)


@pytest.mark.redis
async def test_only_the_instance_holding_the_sweeper_lease_ends_idle_chats(
    redis_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    async with callback_on_two_instances(redis_url, sandbox, str(tmp_path)) as (
        customer,
        first,
        second,
    ):
        await CallbackSetup(server=first, customer=customer).hand_over("cust-s")
        assert first.channel.sweeper is not None and second.channel.sweeper is not None
        await first.channel.sweeper.sweep()  # takes the lease; nothing is idle yet
        later = time.time() + 10_000
        await second.channel.sweeper.sweep(now=later)
        assert await second.relay.handoff_of("cust-s") is not None
        await first.channel.sweeper.sweep(now=later)
        assert await second.relay.handoff_of("cust-s") is None
        # Stopping the holder gives the lease up: the other instance sweeps at once.
        sweeper = first.channel.sweeper
        await first.channel._stop()
        assert await second.switchboard.claim_sweeper(second.channel.sweeper.holder, 10)
        assert not await second.switchboard.claim_sweeper(sweeper.holder, 10)
        await customer.wait_for(
            lambda r: "Back with the bot (timed_out)." in [m.get("text") for m in r]
        )


async def test_one_slow_end_of_chat_holds_up_no_other() -> None:
    async with callback_setup(request_timeout=3, retry_budget=5) as setup:
        for sender in ("cust-a", "cust-b", "cust-c"):
            await setup.hand_over(sender)
        setup.server.sandbox.inject_fault("notifyUserEndChat", hang_seconds=2.5, count=1)
        sweeper = setup.server.channel.sweeper
        assert sweeper is not None
        started = time.monotonic()
        await sweeper.sweep(now=time.time() + 10_000, wait=False)

        def ended() -> int:
            return sum(
                m.get("text") == "Back with the bot (timed_out)." for m in setup.customer.received
            )

        await setup.customer.wait_for(lambda r: ended() == 2, timeout=2.0)
        assert time.monotonic() - started < 2.0
        await setup.customer.wait_for(lambda r: ended() == 3, timeout=8.0)


async def test_agent_files_past_their_retention_are_removed_by_the_sweeper(tmp_path: Path) -> None:
    async with callback_setup(files_dir=str(tmp_path), files_retention=60) as setup:
        chat = await setup.hand_over("cust-file")
        await setup.server.sandbox.agent_upload(chat, "old.pdf", b"%PDF-1.4", "application/pdf")
        posted = await setup.customer.wait_for(lambda r: [m for m in r if "attachment" in m])
        url = posted[0]["attachment"]
        assert len(os.listdir(tmp_path)) == 2  # the file and its description
        long_ago = time.time() - 3600
        for name in os.listdir(tmp_path):
            os.utime(tmp_path / name, (long_ago, long_ago))
        sweeper = setup.server.channel.sweeper
        assert sweeper is not None
        await sweeper.sweep()
        assert os.listdir(tmp_path) == []
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 404
