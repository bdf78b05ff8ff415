"""The people of the end-to-end journey, as real clients of the running stack.

- ``SocketCustomer``: a socket.io widget (python-socketio AsyncClient), as web/ is.
- ``CallbackCustomer``: an app backend on Rasa's callback channel; its replies
  arrive at the ``CallbackReceiver``.
- ``Desk``: the agent in the Omnidesk sandbox, through its control API.
- ``RasaApi``: Rasa's HTTP API, for reading trackers.

Both customers offer the same verbs (``say``, ``send_event``, ``upload``,
``wait_for_text``...), so a journey reads the same on either channel.
"""

import asyncio
import base64
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Dict, List, Optional

import aiohttp
import socketio

from connectors.omnidesk.tasks import stop_all
from tests.e2e.receiver import CallbackReceiver

WAIT = 20.0


def new_conversation_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def poll(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Wait until ``condition()`` (sync) is truthy; return it, or fail saying ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout} s")
        await asyncio.sleep(0.05)


async def apoll(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Like ``poll`` for an async condition."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await condition()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout} s (last: {last!r})")
        await asyncio.sleep(0.1)


class SocketCustomer:
    """A customer in a socket.io widget with session persistence."""

    channel = "socketio"

    def __init__(self, rasa_url: str, http: aiohttp.ClientSession) -> None:
        self.rasa_url = rasa_url
        self.http = http
        self.id = new_conversation_id("e2e-socket")
        self.messages: List[Dict[str, Any]] = []
        self.typing: List[bool] = []
        self.handoff: Dict[str, Any] = {}
        self.sio = socketio.AsyncClient(reconnection=False)
        self._confirmed = asyncio.Event()

        async def omnidesk_customer(data: Any) -> None:
            self.handoff = data if isinstance(data, dict) else {}

        async def bot_uttered(data: Any) -> None:
            self.messages.append(data if isinstance(data, dict) else {"text": str(data)})

        async def agent_typing(data: Any) -> None:
            self.typing.append(bool(isinstance(data, dict) and data.get("typing")))

        async def session_confirm(_: Any) -> None:
            self._confirmed.set()

        self.sio.on("bot_uttered", bot_uttered)
        self.sio.on("agent_typing", agent_typing)
        self.sio.on("session_confirm", session_confirm)
        self.sio.on("omnidesk_customer", omnidesk_customer)

    async def connect(self) -> None:
        # Long polling: python-engineio's websocket client needs aiohttp >= 3.10,
        # Rasa 3.6 pins an older one. The browser test covers the websocket transport.
        await self.sio.connect(
            self.rasa_url, transports=["polling"], socketio_path="/socket.io", wait_timeout=10
        )
        await self.sio.emit("session_request", {"session_id": self.id})
        await asyncio.wait_for(self._confirmed.wait(), timeout=10)

    async def close(self) -> None:
        # Without waiting for the long poll in flight to end; then its task goes too.
        eio = self.sio.eio
        await eio.disconnect(abort=True)
        tasks = [t for t in (eio.read_loop_task, eio.write_loop_task) if t is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=1.0)
            await stop_all(pending)

    async def say(self, text: str) -> None:
        await self.sio.emit("user_uttered", {"message": text, "session_id": self.id})

    async def send_event(self, event: str) -> Dict[str, Any]:
        """The widget's typing or widget event; returns the channel's acknowledgement."""
        answer: Dict[str, Any] = await self.sio.call(
            "customer_event", {"event": event, "session_id": self.id}, timeout=10
        )
        return answer

    def texts(self) -> List[str]:
        return [m["text"] for m in self.messages if m.get("text")]

    def agent_messages(self) -> List[Dict[str, Any]]:
        return [m for m in self.messages if m.get("agent")]

    def agent_file(self) -> Optional[Dict[str, Any]]:
        """The agent's image as the widget gets it: {"url", "agent"}."""
        for message in self.messages:
            attachment = message.get("attachment")
            if isinstance(attachment, dict) and attachment.get("type") == "image":
                return {"url": attachment["payload"]["src"], "agent": message.get("agent")}
        return None

    def agent_typing_seen(self, typing: bool) -> bool:
        return typing in self.typing

    async def wait_for_text(self, fragment: str, after: int = 0, timeout: float = WAIT) -> str:
        def found() -> Optional[str]:
            return next((t for t in self.texts()[after:] if fragment in t), None)

        return str(await poll(found, f"socket.io customer: a message with {fragment!r}", timeout))

    async def wait(self, condition: Callable[[], Any], what: str) -> Any:
        return await poll(condition, f"socket.io customer: {what}")

    async def upload(self, filename: str, data: bytes, content_type: str) -> Dict[str, Any]:
        token = str(self.handoff.get("customer_token", ""))
        return await upload(self.http, self.rasa_url, self.id, filename, data, content_type, token)


class CallbackCustomer:
    """A customer of an app backend on Rasa's callback channel."""

    channel = "callback"

    def __init__(self, rasa_url: str, http: aiohttp.ClientSession, inbox: CallbackReceiver):
        self.rasa_url = rasa_url
        self.http = http
        self.inbox = inbox
        self.id = new_conversation_id("e2e-callback")

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def say(self, text: str) -> None:
        async with self.http.post(
            f"{self.rasa_url}/webhooks/callback/webhook",
            json={"sender": self.id, "message": text},
        ) as answer:
            body = await answer.text()
            assert answer.status == 200, f"callback webhook answered {answer.status}: {body}"

    async def send_event(self, event: str) -> Dict[str, Any]:
        async with self.http.post(
            f"{self.rasa_url}/webhooks/omnidesk/event",
            json={"sender": self.id, "event": event, "token": self.customer_token()},
        ) as answer:
            body: Dict[str, Any] = await answer.json()
            return body

    @property
    def messages(self) -> List[Dict[str, Any]]:
        return self.inbox.for_recipient(self.id)

    def texts(self) -> List[str]:
        return self.inbox.texts(self.id)

    def agent_messages(self) -> List[Dict[str, Any]]:
        return [m for m in self.messages if m.get("agent")]

    def agent_file(self) -> Optional[Dict[str, Any]]:
        """The agent's image as the app backend gets it: {"url", "agent"}."""
        for message in self.messages:
            url = message.get("image")
            if isinstance(url, str):
                return {"url": url, "agent": message.get("agent")}
        return None

    def agent_typing_seen(self, typing: bool) -> bool:
        return any(m.get("typing") is typing for m in self.messages)

    async def wait_for_text(self, fragment: str, after: int = 0, timeout: float = WAIT) -> str:
        def found() -> Optional[str]:
            return next((t for t in self.texts()[after:] if fragment in t), None)

        return str(await poll(found, f"callback customer: a message with {fragment!r}", timeout))

    async def wait(self, condition: Callable[[], Any], what: str) -> Any:
        return await poll(condition, f"callback customer: {what}")

    async def upload(self, filename: str, data: bytes, content_type: str) -> Dict[str, Any]:
        token = self.customer_token()
        return await upload(self.http, self.rasa_url, self.id, filename, data, content_type, token)

    def customer_token(self) -> str:
        """The token the app backend got when the handoff started (the latest one)."""
        for message in reversed(self.messages):
            details = message.get("omnidesk_customer")
            if isinstance(details, dict):
                return str(details.get("customer_token", ""))
        return ""


async def upload(
    http: aiohttp.ClientSession,
    rasa_url: str,
    sender: str,
    filename: str,
    data: bytes,
    content_type: str,
    token: str,
) -> Dict[str, Any]:
    """The customer's file to the agent: POST /webhooks/omnidesk/upload."""
    form = aiohttp.FormData()
    form.add_field("sender", sender)
    form.add_field("token", token)
    form.add_field("file", data, filename=filename, content_type=content_type)
    async with http.post(f"{rasa_url}/webhooks/omnidesk/upload", data=form) as answer:
        body: Dict[str, Any] = await answer.json()
        body["http_status"] = answer.status
        return body


class Desk:
    """The agent's side: the sandbox's control API."""

    def __init__(self, sandbox_url: str, http: aiohttp.ClientSession) -> None:
        self.url = sandbox_url
        self.http = http

    async def _get(self, path: str) -> Any:
        async with self.http.get(f"{self.url}/_sandbox/{path}") as answer:
            assert answer.status == 200, f"GET /_sandbox/{path}: {answer.status}"
            return await answer.json()

    async def _post(self, path: str, body: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        async with self.http.post(f"{self.url}/_sandbox/{path}", json=body or {}) as answer:
            found: Dict[str, Any] = await answer.json()
            assert answer.status == 200, f"POST /_sandbox/{path}: {answer.status} {found}"
            return found

    async def tickets(self) -> List[Dict[str, Any]]:
        return list((await self._get("tickets"))["tickets"])

    async def chats(self) -> List[Dict[str, Any]]:
        return list((await self._get("chats"))["chats"])

    async def chat(self, chat_id: str) -> Dict[str, Any]:
        found: Dict[str, Any] = await self._get(f"chats/{chat_id}")
        return found

    async def attachment(self, attachment_id: int) -> bytes:
        async with self.http.get(f"{self.url}/_sandbox/attachments/{attachment_id}") as answer:
            assert answer.status == 200
            return await answer.read()

    async def reply(self, chat_id: str, message: str, name: str) -> Dict[str, Any]:
        return await self._post(f"chats/{chat_id}/reply", {"message": message, "name": name})

    async def typing(self, chat_id: str, typing: bool) -> Dict[str, Any]:
        return await self._post(f"chats/{chat_id}/typing", {"typing": typing})

    async def upload(
        self, chat_id: str, filename: str, data: bytes, content_type: str
    ) -> Dict[str, Any]:
        return await self._post(
            f"chats/{chat_id}/upload",
            {
                "filename": filename,
                "content_base64": base64.b64encode(data).decode("ascii"),
                "content_type": content_type,
            },
        )

    async def end(self, chat_id: str) -> Dict[str, Any]:
        return await self._post(f"chats/{chat_id}/end")

    async def set_agents_online(self, online: bool) -> None:
        await self._post("agents", {"online": online})

    async def set_agent_profile(self, name: str, picture: str = "") -> None:
        await self._post("agent-profile", {"name": name, "picture": picture})

    async def add_fault(self, **fault: Any) -> None:
        await self._post("faults", fault)

    async def clear_faults(self) -> None:
        async with self.http.delete(f"{self.url}/_sandbox/faults") as answer:
            assert answer.status == 200


class RasaApi:
    """Rasa's HTTP API (``rasa run --enable-api``)."""

    def __init__(self, rasa_url: str, http: aiohttp.ClientSession) -> None:
        self.url = rasa_url
        self.http = http

    async def tracker(self, conversation_id: str) -> Dict[str, Any]:
        async with self.http.get(f"{self.url}/conversations/{conversation_id}/tracker") as answer:
            assert answer.status == 200, f"tracker of {conversation_id}: {answer.status}"
            found: Dict[str, Any] = await answer.json()
            return found

    async def slot(self, conversation_id: str, name: str) -> Any:
        return (await self.tracker(conversation_id))["slots"].get(name)


@asynccontextmanager
async def ready_desk(sandbox_url: str, http: aiohttp.ClientSession) -> AsyncIterator[Desk]:
    """The agent's desk with agents online and no faults, before and after the test."""
    desk = Desk(sandbox_url, http)
    await desk.clear_faults()
    await desk.set_agents_online(True)
    try:
        yield desk
    finally:
        await desk.clear_faults()
        await desk.set_agents_online(True)
