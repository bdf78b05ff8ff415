"""A customer whose socket drops, or who sits on another instance, still gets every agent message.

Real parts only: Sanic servers on loopback, python-socketio clients as the
customer's widget, redis-server, and the sandbox as Omnidesk calling the
hookpoints. "Two instances" are two channel servers in this process with the
same settings and one Redis, as two ``rasa run`` behind a load balancer.
"""

import asyncio
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any, AsyncIterator, Dict, List

import aiohttp
import pytest
import redis.asyncio as aioredis
import socketio
from rasa.core.channels.channel import InputChannel, OutputChannel, UserMessage
from sanic import Blueprint, response

from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.outbox import Outbox, OutboxEntry, OutboxTimings, ToCustomer
from connectors.omnidesk.channel.redis_switchboard import RedisSwitchboard
from connectors.omnidesk.channel.sides import FileLink
from connectors.omnidesk.channel.switchboard import InMemorySwitchboard, Switchboard
from omnidesk_sandbox.testing import Sandbox
from tests.channel.conftest import ChannelServer, callback_setup, channel_server
from tests.channel.test_socketio_relay import PERSISTENT, Widget

AGENT_LINES = ["Hello, I am Anna", "I see your order", "It ships today"]


class SessionWidget(Widget):
    """The widget with session_persistence: it asks for its session on every connect."""

    def __init__(self, session_id: str) -> None:
        super().__init__()
        self.session_id = session_id

    async def join(self, url: str) -> None:
        await self.connect(url)
        confirmed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.client.on("session_confirm", lambda sid: confirmed.set_result(sid))
        await self.client.emit("session_request", {"session_id": self.session_id})
        assert await asyncio.wait_for(confirmed, 5) == self.session_id

    async def say(self, text: str) -> None:
        await self.client.emit("user_uttered", {"message": text, "session_id": self.session_id})

    async def leave(self) -> None:
        """The page goes away: the socket says goodbye and closes (no wait for its long poll)."""
        for namespace in self.client.namespaces:
            await self.client._send_packet(
                self.client.packet_class(socketio.packet.DISCONNECT, namespace=namespace)
            )
        await self.close()


async def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("never happened")
        await asyncio.sleep(0.02)


async def gone_everywhere(server: ChannelServer, session_id: str) -> None:
    """Wait until no instance counts a socket of ``session_id`` as connected."""

    async def gone() -> bool:
        return not await server.channel.outbox.presence.present(session_id)

    await wait_until(gone)


async def escalate(widget: SessionWidget, on: ChannelServer, hookpoints_to: ChannelServer) -> str:
    """The widget's customer asks for a person on ``on``; Omnidesk calls ``hookpoints_to``."""
    started = await hookpoints_to.open_chat()
    on.escalate_on("human please", started)
    await widget.say("human please")
    await widget.wait_for(lambda: "Connecting you to a person." in widget.texts())
    await on.wait_with_agent(widget.session_id)
    return started.chat_session_id


async def agent_says(server: ChannelServer, chat: str, lines: List[str]) -> None:
    for line in lines:
        result = await server.sandbox.agent_reply(chat, line, name="Anna")
        assert (result.status, result.body) == (200, "ok"), line


def agent_texts(widget: Widget) -> List[str]:
    return [m["text"] for m in widget.bot if "text" in m and m.get("agent")]


@asynccontextmanager
async def instances(
    count: int, sandbox: Sandbox, **settings: Any
) -> AsyncIterator[List[ChannelServer]]:
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(channel_server(PERSISTENT, sandbox=sandbox, **settings))
            for _ in range(count)
        ]
        yield servers


@pytest.fixture(params=["memory", "redis"])
def switchboard(request: Any) -> Dict[str, str]:
    if request.param == "memory":
        return {"switchboard_url": "memory://"}
    return {"switchboard_url": request.getfixturevalue("redis_url")}


async def test_a_customer_who_reconnects_gets_what_the_agent_sent_meanwhile_once_in_order(
    sandbox: Sandbox, switchboard: Dict[str, str]
) -> None:
    # The single-instance reconnect case: a phone changes networks.
    async with instances(1, sandbox, **switchboard) as (server,):
        widget = SessionWidget("reconnecting-customer")
        await widget.join(server.url)
        chat = await escalate(widget, on=server, hookpoints_to=server)
        await widget.leave()
        await gone_everywhere(server, widget.session_id)

        await agent_says(server, chat, AGENT_LINES)
        await asyncio.sleep(0.3)
        assert agent_texts(widget) == []

        back = SessionWidget("reconnecting-customer")
        await back.join(server.url)
        try:
            await back.wait_for(lambda: len(agent_texts(back)) >= 3)
            await asyncio.sleep(0.3)  # anything sent twice would arrive by now
            assert agent_texts(back) == AGENT_LINES
            assert [m["agent"]["name"] for m in back.bot if m.get("agent")] == ["Anna"] * 3

            await agent_says(server, chat, ["Anything else?"])
            await back.wait_for(lambda: agent_texts(back)[-1:] == ["Anything else?"])
            assert agent_texts(back) == [*AGENT_LINES, "Anything else?"]
        finally:
            await back.close()


async def test_a_customer_on_one_instance_gets_replies_that_reach_the_other(
    sandbox: Sandbox, redis_url: str
) -> None:
    async with instances(2, sandbox, switchboard_url=redis_url) as (a, b):
        widget = SessionWidget("customer-on-a")
        await widget.join(a.url)
        try:
            chat = await escalate(widget, on=a, hookpoints_to=b)
            assert sandbox.chat(chat).chat_server.startswith(b.url)

            await agent_says(b, chat, AGENT_LINES)
            await widget.wait_for(lambda: len(agent_texts(widget)) >= 3)
            await sandbox.agent_typing(chat, True)
            await widget.wait_for(lambda: widget.typing == [True])
            await asyncio.sleep(0.3)
            assert agent_texts(widget) == AGENT_LINES

            # The agent says goodbye and ends the chat on B at once: the bot's answer,
            # made on B, reaches the socket on A through socket.io's Redis manager,
            # after the goodbye.
            await agent_says(b, chat, ["Goodbye!"])
            await sandbox.agent_end(chat)
            await widget.wait_for(lambda: "Back with the bot (ended_by_agent)." in widget.texts())
            assert widget.texts()[-2:] == ["Goodbye!", "Back with the bot (ended_by_agent)."]
        finally:
            await widget.close()


async def test_a_customer_who_drops_from_one_instance_and_comes_back_on_the_other_gets_it_all(
    sandbox: Sandbox, redis_url: str
) -> None:
    async with instances(2, sandbox, switchboard_url=redis_url) as (a, b):
        widget = SessionWidget("moving-customer")
        await widget.join(a.url)
        chat = await escalate(widget, on=a, hookpoints_to=a)
        await agent_says(a, chat, AGENT_LINES[:1])
        await widget.wait_for(lambda: agent_texts(widget) == AGENT_LINES[:1])
        await widget.leave()
        await gone_everywhere(b, widget.session_id)

        await agent_says(a, chat, AGENT_LINES[1:])
        await asyncio.sleep(0.3)

        back = SessionWidget("moving-customer")
        await back.join(b.url)
        try:
            await back.wait_for(lambda: len(agent_texts(back)) >= 2)
            await asyncio.sleep(0.3)
            assert agent_texts(back) == AGENT_LINES[1:]
            assert agent_texts(widget) == AGENT_LINES[:1]

            # The customer's turns keep reaching the agent from the new instance.
            await back.say("thanks, that is all")
            await sandbox.wait_for(
                lambda: sandbox.chat(chat).messages[-1].text == "thanks, that is all"
            )
        finally:
            await back.close()


async def test_a_backend_that_refuses_for_a_while_gets_every_reply_once_in_order(
    redis_url: str,
) -> None:
    async with callback_setup(switchboard_url=redis_url) as setup:
        chat = await setup.hand_over("backend-down")
        setup.customer.answer_status = 500
        await agent_says(setup.server, chat, AGENT_LINES[:2])
        await asyncio.sleep(0.3)  # refused, tried again, refused
        await agent_says(setup.server, chat, AGENT_LINES[2:])
        assert setup.customer.texts() == ["Connecting you to a person."]

        setup.customer.answer_status = 200
        await setup.customer.wait_for(lambda r: len(r) >= 4)
        await asyncio.sleep(0.3)
        assert setup.customer.texts() == ["Connecting you to a person.", *AGENT_LINES]


async def test_a_hookpoint_answers_503_and_delivers_nothing_when_redis_is_down(
    sandbox: Sandbox, redis_url: str
) -> None:
    async with instances(1, sandbox, switchboard_url=redis_url) as (server,):
        widget = SessionWidget("customer-redis-down")
        await widget.join(server.url)
        try:
            chat = await escalate(widget, on=server, hookpoints_to=server)
            redis = aioredis.from_url(redis_url)
            with suppress(Exception):
                await redis.shutdown(nosave=True)

            result = await sandbox.agent_reply(chat, "Are you there?", name="Anna")
            assert result.status == 503
            assert "unavailable" in result.body
            await asyncio.sleep(0.3)
            assert agent_texts(widget) == []
        finally:
            await widget.close()


class AbsentCustomer:
    """A socket.io customer who never comes back: no socket, nothing can be sent."""

    held_by_socket = True

    def __init__(self) -> None:
        self.sent: List[str] = []

    async def send_text(self, recipient_id: str, text: str, agent: Any = None) -> None:
        self.sent.append(text)

    async def send_file(self, recipient_id: str, file: Any, agent: Any = None) -> None:
        self.sent.append(file.url)

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        return True


def board_at(url: str, retention: float) -> Switchboard:
    """The switchboard, and its outbox store, a channel with ``switchboard_url: url`` has."""
    if url == "memory://":
        return InMemorySwitchboard()
    return RedisSwitchboard(url, outbox_retention=retention)


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_message_that_waits_longer_than_the_retention_is_dropped_and_logged_with_its_chat(
    store: str, request: Any, caplog: Any
) -> None:
    switchboard_url = "memory://" if store == "memory" else request.getfixturevalue("redis_url")
    board = board_at(switchboard_url, retention=0.2)
    store_ = board.outbox_store
    line = AbsentCustomer()
    outbox = Outbox(
        store_,
        {"socketio": line},
        OutboxTimings(retention=0.2, backoff_base=0.01, backoff_max=0.02, poll_interval=0.05),
    )
    outbox.start()
    try:
        await outbox.put("gone-customer", "socketio", "chat-42", ToCustomer("text", text="Hi"))
        await asyncio.sleep(0.1)
        assert await store_.peek("gone-customer", 5) != []
        await asyncio.sleep(0.2)
        outbox.kick("gone-customer")
        await outbox.wait_idle(2.0)
        assert await store_.peek("gone-customer", 5) == []
        assert await store_.waiting() == []
        assert line.sent == []
        dropped = [r.getMessage() for r in caplog.records if "outbox_retention" in r.getMessage()]
        assert len(dropped) == 1 and "chat-42" in dropped[0] and "gone-customer" in dropped[0]
        # Nothing of the drained conversation stays in the process.
        assert outbox.drainer_state_size() == (0, 0, 0)
    finally:
        await outbox.close()
        await board.close()


def test_what_the_customer_is_sent_survives_the_round_trip_through_json() -> None:
    item = ToCustomer(
        "file",
        file=FileLink("https://rasa.example.com/f/t/a.png", "a.png", True),
        agent=AgentIdentity(name="Anna", picture=None),
    )
    entry = OutboxEntry("conv-1", "socketio", "chat-1", 1.5, item)
    assert OutboxEntry.from_fields(entry.to_fields()) == entry
    typing = OutboxEntry("conv-1", "socketio", "chat-1", 2.0, ToCustomer("typing", typing=False))
    assert OutboxEntry.from_fields(typing.to_fields()) == typing


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_socket_stops_counting_when_its_instance_stops_renewing_it(
    store: str, request: Any
) -> None:
    url = "memory://" if store == "memory" else request.getfixturevalue("redis_url")
    board = board_at(url, retention=60)
    outbox_store = board.outbox_store
    try:
        await outbox_store.mark_present("session-1", "socket-a", 0.3)
        await outbox_store.mark_present_many([("session-2", "socket-b")], 0.3)
        assert await outbox_store.present("session-1")
        assert await outbox_store.present("session-2")
        await asyncio.sleep(0.2)
        await outbox_store.mark_present_many([("session-2", "socket-b")], 0.3)  # renewed
        await asyncio.sleep(0.2)
        assert not await outbox_store.present("session-1")  # its instance died
        assert await outbox_store.present("session-2")
        await outbox_store.mark_gone("session-2", "socket-b")
        assert not await outbox_store.present("session-2")
    finally:
        await board.close()


# -- any other channel: its own output channel, which may raise for a while ------------

FLAKY: Dict[str, Any] = {"sent": [], "refusals_left": 0}


class FlakyOutput(OutputChannel):  # type: ignore[misc]
    """A channel's output that refuses while ``refusals_left`` lasts (a messenger's API down)."""

    @classmethod
    def name(cls) -> str:
        return "flaky"

    async def send_text_message(self, recipient_id: str, text: str, **kwargs: Any) -> None:
        if FLAKY["refusals_left"] > 0:
            FLAKY["refusals_left"] -= 1
            raise ConnectionError("the messenger's API is down")
        FLAKY["sent"].append(text)


class FlakyInput(InputChannel):  # type: ignore[misc]
    """A messenger channel with its own output channel (as telegram or slack have)."""

    @classmethod
    def name(cls) -> str:
        return "flaky"

    @classmethod
    def from_credentials(cls, credentials: Any) -> "FlakyInput":
        return cls()

    def get_output_channel(self) -> OutputChannel:
        return FlakyOutput()

    def blueprint(self, on_new_message: Any) -> Blueprint:
        bp = Blueprint("flaky_webhook", url_prefix="/webhooks/flaky")

        async def webhook(request: Any) -> Any:
            body = request.json
            await on_new_message(
                UserMessage(
                    body["message"], FlakyOutput(), body["sender"], input_channel=self.name()
                )
            )
            return response.json({"status": "ok"})

        bp.add_route(webhook, "/webhook", methods=["POST"])
        return bp


async def test_a_messenger_that_raises_for_a_while_gets_every_reply_once_in_order(
    sandbox: Sandbox,
) -> None:
    FLAKY.update(sent=[], refusals_left=0)
    async with channel_server(
        {f"{__name__}.FlakyInput": None}, sandbox=sandbox, agent_name_prefix=False
    ) as server:
        started = await server.open_chat()
        server.escalate_on("human please", started)
        async with aiohttp.ClientSession() as session, session.post(
            f"{server.url}/webhooks/flaky/webhook",
            json={"sender": "messenger-customer", "message": "human please"},
        ) as answer:
            assert answer.status == 200
        await server.wait_with_agent("messenger-customer")
        assert FLAKY["sent"] == ["Connecting you to a person."]

        FLAKY["refusals_left"] = 3
        await agent_says(server, started.chat_session_id, AGENT_LINES)
        await wait_until(lambda: _async(len(FLAKY["sent"]) >= 4), timeout=10.0)
        await asyncio.sleep(0.3)
        assert FLAKY["sent"] == ["Connecting you to a person.", *AGENT_LINES]
        assert FLAKY["refusals_left"] == 0


async def _async(value: Any) -> Any:
    return value
