"""A customer on the socket.io widget is handed to an agent and back."""

import asyncio
from typing import Any, Dict, List

import socketio

from tests.channel.conftest import channel_server

SOCKETIO = {"socketio": {"user_message_evt": "user_uttered", "bot_message_evt": "bot_uttered"}}


class Widget:
    """A customer's socket.io widget: sends turns, collects what it is shown."""

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.bot: List[Dict[str, Any]] = []
        self.typing: List[bool] = []
        self.client.on("bot_uttered", self._on_bot)
        self.client.on("agent_typing", self._on_typing)

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
            await server.sandbox.wait_for(
                lambda: server.relay.switchboard._by_conversation.get(sid)
            )
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
