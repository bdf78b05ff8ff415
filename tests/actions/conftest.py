"""Fixtures for the action's tests: a sandbox Omnidesk and the action server's executor."""

from typing import Any, AsyncIterator, Dict, Iterator, Optional

import pytest
from rasa_sdk.executor import ActionExecutor

from connectors.omnidesk.channel.rasa_compat import action_result
from omnidesk_sandbox.testing import Sandbox, running_sandbox

SECRET = "Hookpoint0Secret0For0Tests0Only"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox(
        chat_account_token="sandboxAccountToken1",
        chat_server_token="sandboxServerToken1",
        agents_online=True,
    ) as running:
        yield running


@pytest.fixture
def omnidesk_env(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The OMNIDESK_* variables `rasa run actions` would have, pointing at the sandbox."""
    for name, value in {
        "OMNIDESK_API_URL": sandbox.url,
        "OMNIDESK_CHAT_CONFIG_URL": sandbox.url,
        "OMNIDESK_CHAT_ACCOUNT_TOKEN": "sandboxAccountToken1",
        "OMNIDESK_CHAT_SERVER_TOKEN": "sandboxServerToken1",
        "OMNIDESK_PUBLIC_URL": "http://127.0.0.1:5005",
        "OMNIDESK_HOOKPOINT_SECRET": SECRET,
        "OMNIDESK_BRAND_ID": "7",
        # Give up quickly when the sandbox is told to fail.
        "OMNIDESK_MAX_ATTEMPTS": "2",
        "OMNIDESK_BACKOFF_BASE": "0.01",
        "OMNIDESK_BACKOFF_MAX": "0.05",
        "OMNIDESK_REQUEST_TIMEOUT": "3",
    }.items():
        monkeypatch.setenv(name, value)
    yield


class JsonActionExecutor(ActionExecutor):  # type: ignore[misc]
    """rasa_sdk's executor, whose ``run`` answers the JSON body the action server sends back."""

    async def run(
        self, action_call: Dict[str, Any], *args: Any, **kwargs: Any
    ) -> Optional[Dict[str, Any]]:
        return action_result(await super().run(action_call, *args, **kwargs))


@pytest.fixture
def executor(omnidesk_env: None) -> ActionExecutor:
    """The action server's executor with the actions package registered, as `rasa run actions` does."""
    action_executor = JsonActionExecutor()
    action_executor.register_package("actions")
    return action_executor
