"""Run the sandbox inside a Python test: `async with running_sandbox() as sandbox:`.

The sandbox listens on 127.0.0.1 (port 0 unless `port=` is given); `sandbox.url`
is the base for OMNIDESK_API_URL and OMNIDESK_CHAT_CONFIG_URL.
"""

import asyncio
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Tuple

from aiohttp import web

from omnidesk_sandbox.app import build_app
from omnidesk_sandbox.config import (
    DEFAULT_CHAT_ACCOUNT_TOKEN,
    DEFAULT_CHAT_SERVER_TOKEN,
    SandboxConfig,
)
from omnidesk_sandbox.faults import parse_fault
from omnidesk_sandbox.keys import agent_of, state_of
from omnidesk_sandbox.state import Chat, HookpointResult, RecordedCall, SandboxState, Ticket


class Sandbox:
    """A running sandbox: its URL, its state, and the agent's actions as coroutines."""

    def __init__(self, app: web.Application, url: str) -> None:
        self.app = app
        self.url = url

    @property
    def state(self) -> SandboxState:
        return state_of(self.app)

    @property
    def calls(self) -> List[RecordedCall]:
        """Every recorded API call, oldest first (RecordedCall dataclasses)."""
        return list(self.state.calls)

    @property
    def tickets(self) -> List[Ticket]:
        """Chatbot-log tickets, oldest first."""
        return list(self.state.tickets.values())

    @property
    def chats(self) -> List[Chat]:
        return list(self.state.chats.values())

    def chat(self, chat_session_id: str) -> Chat:
        """The Chat record; raises omnidesk_sandbox.state.UnknownChat (a LookupError)."""
        return self.state.chat(chat_session_id)

    async def agent_reply(
        self,
        chat_session_id: str,
        message: str,
        name: Optional[str] = None,
        picture: Optional[str] = None,
    ) -> HookpointResult:
        return await agent_of(self.app).reply(chat_session_id, message, name, picture)

    async def agent_typing(self, chat_session_id: str, typing: bool) -> HookpointResult:
        return await agent_of(self.app).typing(chat_session_id, typing)

    async def agent_upload(
        self,
        chat_session_id: str,
        filename: str,
        data: bytes,
        content_type: str = "application/octet-stream",
    ) -> HookpointResult:
        return await agent_of(self.app).upload(chat_session_id, filename, data, content_type)

    async def agent_end(self, chat_session_id: str) -> HookpointResult:
        return await agent_of(self.app).end(chat_session_id)

    def set_agents_online(self, online: bool) -> None:
        self.state.set_agents_online(online)

    def set_agent_profile(self, name: str, picture: str = "") -> None:
        self.state.set_agent_profile(name, picture)

    def inject_fault(
        self,
        endpoint: str,
        *,
        status: Optional[int] = None,
        count: Optional[int] = None,
        latency_ms: Optional[int] = None,
        error_rate: Optional[float] = None,
        hang_seconds: Optional[float] = None,
        drop: bool = False,
        retry_after: Optional[int] = None,
        process_first: bool = False,
    ) -> None:
        """Add a fault for `endpoint` (e.g. "notifyUserNewChatMessage", or "*")."""
        spec: Dict[str, Any] = {
            "endpoint": endpoint,
            "status": status,
            "count": count,
            "latency_ms": latency_ms,
            "error_rate": error_rate,
            "hang_seconds": hang_seconds,
            "drop": drop,
            "retry_after": retry_after,
            "process_first": process_first,
        }
        self.state.faults.add(parse_fault(spec, self.state.config.default_hang_seconds))

    def seed_faults(self, seed: int) -> None:
        """Seed the RNG behind error_rate, for repeatable tests."""
        self.state.faults.rng.seed(seed)

    def clear_faults(self) -> None:
        self.state.faults.clear()

    def reset(self) -> None:
        self.state.reset()

    async def wait_for(
        self, condition: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02
    ) -> Any:
        """Poll `condition` until it returns something truthy; return it, or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise asyncio.TimeoutError(f"condition not met within {timeout:g} s")
            await asyncio.sleep(interval)


@asynccontextmanager
async def running_sandbox(
    chat_account_token: str = DEFAULT_CHAT_ACCOUNT_TOKEN,
    chat_server_token: str = DEFAULT_CHAT_SERVER_TOKEN,
    api_key: Optional[str] = None,
    agents_online: bool = True,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    **settings: Any,
) -> AsyncIterator[Sandbox]:
    """Start a sandbox for the duration of the block. Extra keywords go to SandboxConfig."""
    config = SandboxConfig(
        chat_account_token=chat_account_token,
        chat_server_token=chat_server_token,
        api_key=api_key,
        agents_online=agents_online,
        **settings,
    )
    runner, url = await start(config, host, port)
    try:
        yield Sandbox(runner.app, url)
    finally:
        await runner.cleanup()


async def start(config: SandboxConfig, host: str, port: int) -> Tuple[web.AppRunner, str]:
    """Start the app on host:port (0: any free port); return the runner and the base URL."""
    runner = web.AppRunner(build_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound_port = int(runner.addresses[0][1])
    shown_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown_host}:{bound_port}"
