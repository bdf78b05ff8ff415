"""A customer on the socket.io widget is handed to an agent and back."""

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict, List, Tuple

import socketio

from tests.channel.conftest import ChannelServer, channel_server

SOCKETIO = {"socketio": {"user_message_evt": "user_uttered", "bot_message_evt": "bot_uttered"}}


class Widget:
    """A customer's socket.io widget: sends turns, collects what it is shown."""

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.bot: List[Dict[str, Any]] = []
        self.typing: List[bool] = []
        self.handoff: Dict[str, Any] = {}
        self.client.on("bot_uttered", self._on_bot)
        self.client.on("agent_typing", self._on_typing)
        self.client.on("omnidesk_customer", self._on_handoff)

    async def _on_handoff(self, data: Dict[str, Any]) -> None:
        self.handoff = data

    async def _on_bot(self, data: Dict[str, Any]) -> None:
        self.bot.append(data)

    async def _on_typing(self, data: Dict[str, Any]) -> None:
        self.typing.append(bool(data["typing"]))

    async def connect(self, url: str) -> str:
        await self.client.connect(url, socketio_path="/socket.io", transports=["polling"])
        return str(self.client.get_sid())

    async def say(self, text: str) -> None:
        await self.client.emit("user_uttered", {"message": text})

    async def wait_for(self, condition: Any, timeout: float = 5.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = condition()
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"widget never saw it; bot messages: {self.bot!r}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        # abort: do not wait for the open long poll to come back.
        await self.client.eio.disconnect(abort=True)

    def texts(self) -> List[str]:
        return [m["text"] for m in self.bot if "text" in m]


async def test_customer_and_agent_talk_through_the_widget() -> None:
    async with channel_server(SOCKETIO) as server:
        widget = Widget()
        sid = await widget.connect(server.url)
        try:
            started = await server.open_chat()
            server.escalate_on("human please", started)
            await widget.say("human please")
            await widget.wait_for(lambda: "Connecting you to a person." in widget.texts())
            chat = started.chat_session_id
            await server.wait_with_agent(sid)
            assert not any("omnidesk_handoff" in str(m) for m in widget.bot)

            await widget.say("my order is late")
            await server.sandbox.wait_for(
                lambda: (
                    [m.text for m in server.sandbox.chat(chat).messages][-1] == "my order is late"
                )
            )
            assert server.sandbox.chat(chat).messages[-1].number == 2
            assert [m.text for m in server.bot.seen] == ["human please"]

            result = await server.sandbox.agent_reply(
                chat, "Hi, I am Anna", name="Anna", picture="https://example.com/a.png"
            )
            assert result.status == 200 and result.body == "ok"
            shown = await widget.wait_for(
                lambda: [m for m in widget.bot if m.get("text") == "Hi, I am Anna"]
            )
            assert shown[0]["agent"] == {"name": "Anna", "picture": "https://example.com/a.png"}

            await server.sandbox.agent_typing(chat, True)
            await widget.wait_for(lambda: widget.typing == [True])

            await server.sandbox.agent_end(chat)
            await widget.wait_for(lambda: "Back with the bot (ended_by_agent)." in widget.texts())
            await widget.say("thanks")
            await widget.wait_for(lambda: "bot: thanks" in widget.texts())
        finally:
            await widget.close()


PERSISTENT = {
    "socketio": {
        "user_message_evt": "user_uttered",
        "bot_message_evt": "bot_uttered",
        "session_persistence": True,
    }
}


@asynccontextmanager
async def persistent_widget_with_agent(
    session_id: str,
) -> AsyncIterator[Tuple[ChannelServer, Widget, str]]:
    """A widget that joined ``session_id`` and was handed to an agent; yields the chat id."""
    async with channel_server(PERSISTENT) as server:
        widget = Widget()
        await widget.connect(server.url)
        try:
            confirmed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            widget.client.on("session_confirm", lambda sid: confirmed.set_result(sid))
            await widget.client.emit("session_request", {"session_id": session_id})
            assert await asyncio.wait_for(confirmed, 5) == session_id
            started = await server.open_chat()
            server.escalate_on("human please", started)
            await widget.client.emit(
                "user_uttered", {"message": "human please", "session_id": session_id}
            )
            await widget.wait_for(lambda: "Connecting you to a person." in widget.texts())
            yield server, widget, started.chat_session_id
        finally:
            await widget.close()


async def test_a_widget_with_session_persistence_gets_the_bot_and_the_agent() -> None:
    # Rasa's own session_request handler forgets to await enter_room on newer
    # python-socketio, and the widget then never hears a word.
    async with persistent_widget_with_agent("customer-session-1") as (server, widget, chat):
        result = await server.sandbox.agent_reply(chat, "Hello from Anna")
        assert result.body == "ok"
        await widget.wait_for(lambda: "Hello from Anna" in widget.texts())


async def test_the_widget_typing_event_reaches_the_agent() -> None:
    async with persistent_widget_with_agent("customer-session-2") as (server, widget, chat):
        answer = await widget.client.call(
            "customer_event",
            {"event": "startedtyping", "session_id": "customer-session-2"},
            timeout=5,
        )
        assert answer.get("status") != "error", answer
        await server.sandbox.wait_for(lambda: server.sandbox.chat(chat).events)
        assert [e.name for e in server.sandbox.chat(chat).events] == ["startedtyping"]

        refused = await widget.client.call(
            "customer_event", {"event": "dancing", "session_id": "customer-session-2"}, timeout=5
        )
        assert refused["status"] == "error" and "event" in refused["message"]
        assert [e.name for e in server.sandbox.chat(chat).events] == ["startedtyping"]
