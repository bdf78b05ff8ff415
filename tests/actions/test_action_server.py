"""The shipped action served by rasa_sdk's own server, as a bot's action server runs it.

``python -m rasa_sdk --actions connectors.omnidesk.action`` needs no rasa and no
license (Rasa Pro licenses the ``rasa`` command line, ``rasa run actions``
included), so this runs on both lines: rasa-sdk 3.6 beside Rasa 3.6 and the
rasa-sdk of Rasa Pro. Rasa's request goes to /webhook over HTTP; the answer
carries the control payload and the slots, and the sandbox holds the new chat.
"""

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import AsyncIterator, Dict, List

import aiohttp
import pytest

from connectors.omnidesk import handoff
from omnidesk_sandbox.testing import Sandbox
from tests.actions.test_escalate_to_human import asked_for_a_person, request, slots_set
from tests.channel.test_metrics import moved, scrape_url
from tests.e2e.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0


@pytest.fixture
async def action_server(omnidesk_env: None, tmp_path: Path) -> AsyncIterator[str]:
    """``python -m rasa_sdk`` on a loopback port, serving the package's action.

    In its own process group, stopped as a group: Sanic 22 on serves from a
    worker process of its own, which must not outlive the test.
    """
    port = free_port()
    env = dict(os.environ, SANIC_HOST="127.0.0.1", PYTHONPATH=str(ROOT))
    log_path = tmp_path / "action-server.log"
    log = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rasa_sdk",
        "--actions",
        "connectors.omnidesk.action",
        "--port",
        str(port),
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_healthy(url, process, log_path)
        yield url
    finally:
        _stop_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except asyncio.TimeoutError:
            _stop_group(process.pid, signal.SIGKILL)
            await process.wait()
        log.close()


def _stop_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


async def _wait_healthy(url: str, process: "asyncio.subprocess.Process", log: Path) -> None:
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    async with aiohttp.ClientSession() as session:
        while True:
            if process.returncode is not None:
                raise AssertionError(
                    f"python -m rasa_sdk exited with {process.returncode}:\n"
                    + log.read_text(errors="replace")[-3000:]
                )
            try:
                async with session.get(f"{url}/health") as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"python -m rasa_sdk did not answer within {START_TIMEOUT} s")
            await asyncio.sleep(0.2)


async def test_rasa_sdk_serves_the_shipped_action_and_it_opens_the_chat(
    action_server: str, sandbox: Sandbox
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{action_server}/actions") as listed:
            names: List[Dict[str, str]] = await listed.json()
        assert {"name": "action_escalate_to_human"} in names

        body = request(asked_for_a_person(), {"customer_email": "jane@example.com"})
        async with session.post(f"{action_server}/webhook", json=body) as answer:
            assert answer.status == 200, await answer.text()
            response = await answer.json()

    slots = slots_set(response)
    assert slots["handoff_active"] is True
    chat_session_id = slots["omnidesk_chat_session_id"]
    assert sandbox.chat(chat_session_id).email_address == "jane@example.com"
    control = [m["custom"] for m in response["responses"] if m.get("custom")]
    assert control == [handoff.HandoffStarted(chat_session_id, 2).to_json_message()]


@pytest.fixture
def action_metrics_port(omnidesk_env: None, monkeypatch: pytest.MonkeyPatch) -> int:
    """OMNIDESK_ACTION_METRICS_PORT for the action server started after it."""
    port = free_port()
    monkeypatch.setenv("OMNIDESK_ACTION_METRICS_PORT", str(port))
    return port


async def test_the_action_server_serves_its_metrics_on_its_own_port(
    action_metrics_port: int, action_server: str, sandbox: Sandbox
) -> None:
    metrics_url = f"http://127.0.0.1:{action_metrics_port}/metrics"
    before = await scrape_url(metrics_url)
    sandbox.set_agents_online(False)
    async with aiohttp.ClientSession() as session:
        for email in ("one@example.com", "two@example.com"):
            body = request(asked_for_a_person(), {"customer_email": email})
            async with session.post(f"{action_server}/webhook", json=body) as answer:
                assert answer.status == 200, await answer.text()
        # Omnidesk refuses the chatbot log: the escalation fails.
        sandbox.inject_fault("chatbot", status=503)
        body = request(asked_for_a_person(), {"customer_email": "three@example.com"})
        async with session.post(f"{action_server}/webhook", json=body) as answer:
            assert answer.status == 200, await answer.text()
    after = await scrape_url(metrics_url)

    assert moved(before, after, "omnidesk_handoffs_started_total", reason="asked_for_person") == 3
    assert moved(before, after, "omnidesk_handoffs_ended_total", outcome="no_agent") == 2
    assert moved(before, after, "omnidesk_handoffs_ended_total", outcome="failed") == 1
    assert moved(before, after, "omnidesk_api_calls_total", call="chatbot", status="503") >= 1
    assert moved(before, after, "omnidesk_api_calls_total", call="chatbot", status="200") == 2
    assert moved(before, after, "omnidesk_api_call_seconds_count", call="requestChatConfig") == 2
    # Only what the action server moves: no channel gauge reading 0 there.
    names = {name for name, _ in after}
    assert "omnidesk_handoffs_open" not in names
    assert "omnidesk_switchboard_up" not in names
