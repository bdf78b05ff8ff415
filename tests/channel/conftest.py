"""The channel on a real Sanic server on loopback, with the sandbox as Omnidesk.

``channel_server(...)`` starts a Sanic app (21.12 on Rasa 3.6, 25 on Rasa Pro)
in the test's own event loop (``create_server(return_asyncio_server=True)`` and
its listeners), with
OmnideskInput registered as Rasa registers it (url_prefix /webhooks/omnidesk)
and a small stand-in for Rasa's message handler: it answers a bot turn through
the output channel it is given, from a script (text -> messages), so a test can
make "the action" utter the control payload. End-to-end tests may reuse it.
"""

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Tuple

import aiohttp
import pytest
from aiohttp import web
from rasa.core.channels.channel import UserMessage
from sanic import Sanic

from connectors.omnidesk.channel import rasa_compat
from connectors.omnidesk.channel.input import OmnideskInput
from connectors.omnidesk.client import OmnideskClient
from connectors.omnidesk.handoff import HandoffStarted, new_chat_session_id
from connectors.omnidesk.settings import OmnideskSettings
from omnidesk_sandbox.testing import Sandbox, running_sandbox
from tests.conftest import require_program
from tests.e2e.stack import free_port, redis_command

SECRET = "test-hookpoint-secret-0123456789abcdef"
ACCOUNT_TOKEN = "sandboxAccountToken1"
SERVER_TOKEN = "sandboxServerToken1"

# Several apps start in one process: Sanic's test mode keeps its start-up
# rewriting (TouchUp) repeatable.
Sanic.test_mode = True

# Tests must not pick up a developer's real Omnidesk from the environment.
for _name in [name for name in os.environ if name.startswith("OMNIDESK_")]:
    os.environ.pop(_name)


DOMAIN_YAML = """
version: "3.1"
intents:
  - greet
  - omnidesk_chat_ended
entities:
  - handoff_outcome
responses:
  utter_omnidesk_delivery_failed:
    - text: "Your message did not reach the agent (from the domain)."
  utter_omnidesk_agent_wait:
    - text: "Still looking for someone (from the domain)."
"""


def rasa_agent() -> Any:
    """A real Rasa Agent with a domain and an in-memory tracker store (no model needed)."""
    from rasa.core.agent import Agent
    from rasa.shared.core.domain import Domain

    domain = Domain.from_yaml(DOMAIN_YAML)
    return Agent(domain=domain, tracker_store=rasa_compat.in_memory_tracker_store(domain))


@dataclass
class BotScript:
    """The stand-in for Rasa: what the bot answers, and every turn it saw."""

    replies: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    seen: List[UserMessage] = field(default_factory=list)
    # Seconds the bot takes over a turn (a slow action), by the turn's text.
    delays: Dict[str, float] = field(default_factory=dict)
    # Rasa's lock store: the bot holds the conversation's lock for a turn, as
    # Agent.handle_message does.
    lock_store: Any = None

    async def handle(self, message: UserMessage) -> None:
        if self.lock_store is None:
            await self._answer(message)
            return
        async with self.lock_store.lock(message.sender_id, wait_time_in_seconds=0.02):
            await self._answer(message)

    async def _answer(self, message: UserMessage) -> None:
        self.seen.append(message)
        delay = self.delays.get(message.text or "")
        if delay:
            await asyncio.sleep(delay)
        text = message.text or ""
        if text in self.replies:
            for reply in self.replies[text]:
                await message.output_channel.send_response(message.sender_id, dict(reply))
            return
        if text.startswith("/omnidesk_chat_ended"):
            outcome = json.loads(text[len("/omnidesk_chat_ended") :])["handoff_outcome"]
            await message.output_channel.send_response(
                message.sender_id, {"text": f"Back with the bot ({outcome})."}
            )
            return
        await message.output_channel.send_response(message.sender_id, {"text": f"bot: {text}"})


@dataclass
class ChannelServer:
    app: Sanic
    url: str
    channel: OmnideskInput
    bot: BotScript
    sandbox: Sandbox
    settings: OmnideskSettings

    @property
    def relay(self) -> Any:
        assert self.channel.relay is not None
        return self.channel.relay

    # The relay hides its parts from the product; a test may look inside, here only.

    @property
    def switchboard(self) -> Any:
        return self.relay._switchboard

    @property
    def record(self) -> Any:
        return self.relay._record

    @property
    def rasa_side(self) -> Any:
        """The relay's view of Rasa (rasa_bot.RasaBot)."""
        return self.relay._bot

    def hook_url(self, name: str, chat: Optional[str] = None, secret: Optional[str] = None) -> str:
        """The hookpoint URL Omnidesk calls for ``chat``; ``secret`` puts another segment in."""
        if secret is not None:
            segment = secret
        else:
            assert chat is not None, "a hookpoint URL is per chat"
            segment = self.settings.hookpoint_token(chat)
        return f"{self.url}/webhooks/omnidesk/hook/{segment}/{name}"

    async def open_chat(self, first_message: str = "I need a person") -> HandoffStarted:
        """What action_escalate_to_human does: open the chat with message 1."""
        chat_session_id = new_chat_session_id()
        async with OmnideskClient(self.settings) as client:
            await client.notify_user_new_chat_message(
                chat_session_id=chat_session_id, message=first_message, message_number=1
            )
        return HandoffStarted(chat_session_id=chat_session_id, next_message_number=2)

    async def wait_with_agent(self, conversation_id: str, timeout: float = 5.0) -> None:
        """Wait until the switchboard has ``conversation_id`` in relay mode."""
        deadline = asyncio.get_running_loop().time() + timeout
        while await self.relay.handoff_of(conversation_id) is None:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{conversation_id} never went to an agent")
            await asyncio.sleep(0.02)

    def escalate_on(self, text: str, started: HandoffStarted) -> None:
        """The bot answers ``text`` with a line and the control payload, as the action does."""
        self.bot.replies[text] = [
            {"text": "Connecting you to a person."},
            {"custom": started.to_json_message()},
        ]


def _bound_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


@asynccontextmanager
async def channel_server(
    customer_channels: Dict[str, Any],
    *,
    sandbox: Optional[Sandbox] = None,
    agent: Any = "default",
    access_log: bool = True,
    port: int = 0,
    cors: Optional[str] = None,
    **settings: Any,
) -> AsyncIterator[ChannelServer]:
    async with _maybe_sandbox(sandbox) as running:
        sock = _bound_socket(port)
        port = sock.getsockname()[1]
        credentials: Dict[str, Any] = {
            "customer_channels": customer_channels,
            "public_url": f"http://127.0.0.1:{port}",
            "hookpoint_secret": SECRET,
            "chat_account_token": ACCOUNT_TOKEN,
            "chat_server_token": SERVER_TOKEN,
            "api_url": running.url,
            "chat_config_url": running.url,
            "max_attempts": 2,
            "backoff_base": 0.01,
            "backoff_max": 0.02,
            "request_timeout": 3,
            "connect_timeout": 1,
        }
        credentials.update(settings)
        redis = credentials.get("redis") or credentials.get("switchboard_url", "")
        if (credentials.get("redis") or str(redis).startswith("redis")) and not credentials.get(
            "files_dir"
        ):
            # Instances that share a Redis switchboard share their agent files, as in production.
            credentials["files_dir"] = shared_files_dir(json.dumps(redis, sort_keys=True))
        channel = OmnideskInput.from_credentials(credentials)
        bot = BotScript()
        app = Sanic(f"omnidesk_test_{uuid.uuid4().hex[:12]}", configure_logging=False)
        if agent == "default":
            agent = rasa_agent()
        if agent is not None:
            app.ctx.agent = agent
            bot.lock_store = getattr(agent, "lock_store", None)
        if cors is not None:
            # What `rasa run --cors` does, for a page served from another origin.
            from rasa.server import configure_cors

            configure_cors(app, cors)
        app.blueprint(channel.blueprint(bot.handle), url_prefix="/webhooks/omnidesk")
        app.ctx.input_channels = [channel]
        for wrapped in channel.customer_channels:
            sio = rasa_compat.socketio_server(wrapped)
            if sio is not None:
                # Long polls end quickly, so a test's client disconnects at once.
                sio.eio.ping_interval = 0.5
        server: Any = await app.create_server(
            sock=sock, return_asyncio_server=True, access_log=access_log
        )
        await server.startup()
        await server.before_start()
        await server.after_start()
        try:
            yield ChannelServer(
                app=app,
                url=f"http://127.0.0.1:{port}",
                channel=channel,
                bot=bot,
                sandbox=running,
                settings=channel.settings,
            )
        finally:
            if channel.relay is not None:
                await channel.relay.wait_idle(3.0)
            await server.before_stop()
            await server.close()
            await server.after_stop()
            sock.close()


def shared_files_dir(switchboard_url: str) -> str:
    """One agent-files directory per Redis switchboard, as instances sharing it would have."""
    digest = hashlib.sha1(switchboard_url.encode("utf-8")).hexdigest()[:12]
    directory = os.path.join(tempfile.gettempdir(), f"omnidesk-test-files-{digest}")
    os.makedirs(directory, exist_ok=True)
    return directory


@asynccontextmanager
async def _maybe_sandbox(sandbox: Optional[Sandbox]) -> AsyncIterator[Sandbox]:
    if sandbox is not None:
        yield sandbox
        return
    async with running_sandbox(
        chat_account_token=ACCOUNT_TOKEN, chat_server_token=SERVER_TOKEN
    ) as running:
        yield running


@dataclass
class CallbackReceiver:
    """The customer's app backend: an aiohttp server the callback channel posts to."""

    url: str
    received: List[Dict[str, Any]]
    answer_status: int = 200  # set to 500 to play a backend that is down

    async def wait_for(
        self, condition: Callable[[List[Dict[str, Any]]], Any], timeout: float = 5.0
    ) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = condition(self.received)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"callback receiver never saw it; got {self.received!r}")
            await asyncio.sleep(0.02)

    def texts(self) -> List[str]:
        return [m["text"] for m in self.received if "text" in m]


@asynccontextmanager
async def callback_receiver() -> AsyncIterator[CallbackReceiver]:
    receiver = CallbackReceiver(url="", received=[])

    async def bot(request: web.Request) -> web.Response:
        if receiver.answer_status != 200:
            return web.json_response({"error": "down"}, status=receiver.answer_status)
        receiver.received.append(await request.json())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/bot", bot)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        receiver.url = f"http://127.0.0.1:{port}/bot"
        yield receiver
    finally:
        await runner.cleanup()


async def post_json(url: str, body: Any) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        await resp.read()
        return resp


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox(
        chat_account_token=ACCOUNT_TOKEN, chat_server_token=SERVER_TOKEN
    ) as running:
        yield running


@dataclass
class CallbackSetup:
    server: ChannelServer
    customer: CallbackReceiver

    async def say(self, sender: str, text: str) -> int:
        async with aiohttp.ClientSession() as session, session.post(
            f"{self.server.url}/webhooks/callback/webhook",
            json={"sender": sender, "message": text},
        ) as resp:
            await resp.read()
            return resp.status

    def customer_token(self, sender: str) -> str:
        """The token the app backend got when ``sender``'s handoff started (the latest one)."""
        for message in reversed(self.customer.received):
            details = message.get("omnidesk_customer")
            if message.get("recipient_id") == sender and isinstance(details, dict):
                return str(details["customer_token"])
        raise AssertionError(f"no omnidesk_customer for {sender} in {self.customer.received!r}")

    async def hand_over(self, sender: str) -> str:
        """Escalate ``sender`` as the action would; return the Omnidesk chatSessionID."""
        started = await self.server.open_chat()
        self.server.escalate_on(f"escalate {sender}", started)
        await self.say(sender, f"escalate {sender}")
        await self.server.wait_with_agent(sender)
        # Rasa Pro's CallbackOutput posts from a background queue (3.19 on): the webhook
        # answers before the bot's line reaches the backend, so wait for it.
        await self.customer.wait_for(
            lambda r: "Connecting you to a person." in self.customer.texts()
        )
        # The handoff details go through the outbox, right after the handoff starts.
        await self.customer.wait_for(
            lambda r: any(m.get("recipient_id") == sender and "omnidesk_customer" in m for m in r)
        )
        return started.chat_session_id


@asynccontextmanager
async def callback_setup(**settings: Any) -> AsyncIterator[CallbackSetup]:
    async with callback_receiver() as customer, channel_server(
        {"callback": {"url": customer.url}}, **settings
    ) as server:
        yield CallbackSetup(server=server, customer=customer)


class RedisServer:
    """A real redis-server on a fixed loopback port that a test can stop and start again."""

    def __init__(self) -> None:
        self.program = require_program("redis-server", "redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            redis_command(self.program, self.port), stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it takes connections and never answers, as a hung Redis."""
        assert self.process is not None, "redis-server is not running"
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server; what it held is gone, as after a crash without persistence."""
        if self.process is not None:
            # A frozen server only acts on SIGTERM once it runs again.
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(timeout=5)
            self.process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def callback_on_two_instances(
    redis_url: str, sandbox: Sandbox, files_dir: str, **settings: Any
) -> AsyncIterator[Tuple[CallbackReceiver, ChannelServer, ChannelServer]]:
    """One callback backend, two channel servers sharing one Redis and one files_dir."""
    shared = {"switchboard_url": redis_url, "files_dir": files_dir, **settings}
    async with callback_receiver() as customer, channel_server(
        {"callback": {"url": customer.url}}, sandbox=sandbox, **shared
    ) as first, channel_server(
        {"callback": {"url": customer.url}}, sandbox=sandbox, **shared
    ) as second:
        yield customer, first, second


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port, empty, stopped after the test."""
    program = require_program("redis-server", "redis-server")
    port = free_port()
    process = subprocess.Popen(
        [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=5)
