"""The relay's logic with no server and no socket.

``Desk`` stands in for Omnidesk behind the client's ``MockTransport``: it reads
each call the real ``OmnideskClient`` prepared (its multipart form) and answers
from a script. ``RecordingLine`` stands in for the customer's channel and
``FakeBot`` for Rasa. The relay, its turns, notices, record and outbox run as
they do in production, on the in-memory switchboard and outbox store.
"""

import asyncio
import email
import email.policy
import tempfile
from collections import defaultdict, deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Deque, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from connectors.omnidesk.channel.files import AgentFileStore
from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.outbox import Outbox, OutboxTimings, ToCustomer
from connectors.omnidesk.channel.outbox_store import OutboxStore
from connectors.omnidesk.channel.relay import Relay
from connectors.omnidesk.channel.sides import FileLink, RecordEntry
from connectors.omnidesk.channel.switchboard import Handoff, InMemorySwitchboard, Switchboard
from connectors.omnidesk.client import OmnideskClient
from connectors.omnidesk.handoff import HandoffOutcome, HandoffStarted, new_chat_session_id
from connectors.omnidesk.settings import OmnideskSettings
from connectors.omnidesk.transport import MockTransport, Request, Response, TransportError

DESK_URL = "https://omnidesk.test"
CHANNEL = "callback"
ANNA = AgentIdentity(name="Anna", picture=None)


@dataclass
class Call:
    """One call the client made: its last path segment and its form fields."""

    name: str
    fields: Dict[str, str]


class Desk:
    """Omnidesk behind a MockTransport: records each call's form, answers from a script."""

    def __init__(self) -> None:
        self.calls: List[Call] = []
        self.unreachable = False
        self._script: Dict[str, Deque[Tuple[int, float]]] = defaultdict(deque)
        self.gates: Dict[str, asyncio.Event] = {}

    def answer(self, name: str, *replies: Tuple[int, float]) -> None:
        """Answer the next calls of ``name`` with (status, seconds to wait), then 200 at once."""
        self._script[name].extend(replies)

    def messages(self) -> List[str]:
        return [c.fields["message"] for c in self.calls if c.name == "notifyUserNewChatMessage"]

    def numbers(self) -> List[Optional[str]]:
        return [
            c.fields.get("messageNumber")
            for c in self.calls
            if c.name == "notifyUserNewChatMessage"
        ]

    def named(self, name: str) -> List[Call]:
        return [c for c in self.calls if c.name == name]

    async def handle(self, request: Request) -> Response:
        if self.unreachable:
            raise TransportError("ClientConnectorError: Cannot connect to host omnidesk.test:443")
        name = urlsplit(request.url).path.rsplit("/", 1)[-1]
        content_type = request.headers.get("Content-Type", "")
        parsed = email.message_from_bytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + request.body,
            policy=email.policy.HTTP,
        )
        fields: Dict[str, str] = {}
        for part in parsed.iter_parts():
            key = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            fields[str(key)] = payload.decode("utf-8", "replace")
        status, wait = self._script[name].popleft() if self._script[name] else (200, 0.0)
        if wait:
            await asyncio.sleep(wait)
        # Recorded when answered: the order Omnidesk took them in.
        self.calls.append(Call(name, fields))
        if 200 <= status < 300:
            return Response(
                status, {"Content-Type": "application/json"}, b'{"type": "result", "message": "ok"}'
            )
        return Response(
            status,
            {"Content-Type": "application/json"},
            b'{"status": "error", "message": "refused by the desk"}',
        )


@dataclass
class Sent:
    kind: str
    recipient: str
    value: Any
    agent: Optional[AgentIdentity] = None


class RecordingLine:
    """The customer's channel: records what reaches the customer; can refuse for a while."""

    held_by_socket = False

    def __init__(self) -> None:
        self.sent: List[Sent] = []
        self.refusing = False

    def _send(self, sent: Sent) -> None:
        if self.refusing:
            raise ConnectionError("the customer's channel refused")
        self.sent.append(sent)

    async def send_text(
        self, recipient_id: str, text: str, agent: Optional[AgentIdentity] = None
    ) -> None:
        self._send(Sent("text", recipient_id, text, agent))

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None:
        self._send(Sent("file", recipient_id, file.url, agent))

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        self._send(Sent("typing", recipient_id, typing))
        return True

    async def send_details(self, recipient_id: str, details: Any) -> bool:
        self._send(Sent("details", recipient_id, dict(details)))
        return True

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        self._send(Sent("text", recipient_id, message.get("text")))

    def texts(self, recipient: Optional[str] = None) -> List[str]:
        return [
            s.value
            for s in self.sent
            if s.kind == "text" and (recipient is None or s.recipient == recipient)
        ]


@dataclass
class FakeBot:
    """Rasa as the relay sees it: a domain's texts, tracker writes, the hand-back."""

    responses: Dict[str, str] = field(default_factory=dict)
    knows_end_intent: bool = False
    records: Dict[str, List[RecordEntry]] = field(default_factory=lambda: defaultdict(list))
    handed_back: List[Tuple[str, HandoffOutcome]] = field(default_factory=list)
    outbox: Optional[Outbox] = None

    def response_text(self, name: str) -> Optional[str]:
        return self.responses.get(name)

    async def record(self, conversation_id: str, entries: Sequence[RecordEntry]) -> None:
        self.records[conversation_id].extend(entries)

    async def hand_back(self, handoff: Handoff, outcome: HandoffOutcome) -> bool:
        self.handed_back.append((handoff.conversation_id, outcome))
        if self.knows_end_intent and self.outbox is not None:
            # The bot's own rule answers the end-of-chat intent, into the handoff's outbox.
            answer = {"text": f"bot: back ({outcome.value})"}
            await self.outbox.put(
                handoff.conversation_id,
                handoff.channel,
                handoff.chat_session_id,
                ToCustomer("response", response=answer, notice="end"),
            )
        return self.knows_end_intent


def settings(**overrides: Any) -> OmnideskSettings:
    values: Dict[str, Any] = {
        "api_url": DESK_URL,
        "chat_config_url": DESK_URL,
        "chat_account_token": "AccountToken1234567890",
        "chat_server_token": "ServerToken0987654321",
        "public_url": "https://bot.example.com",
        "hookpoint_secret": "hookpoint-secret-0123456789abcdef",
        "max_attempts": 1,
        "connect_timeout": 1,
        "request_timeout": 2,
        "retry_budget": 3,
        "backoff_base": 0.01,
        "backoff_max": 0.02,
        "outage_hold": 2,
        "new_chat_grace": 0.05,
    }
    values.update(overrides)
    return OmnideskSettings.from_credentials(values, env={})


async def wait_until(condition: Any, timeout: float = 3.0) -> None:
    """Until ``condition()`` holds; AssertionError after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("never happened")
        await asyncio.sleep(0.01)


@dataclass
class Harness:
    relay: Relay
    desk: Desk
    line: RecordingLine
    bot: FakeBot
    switchboard: Switchboard
    store: OutboxStore
    outbox: Outbox

    async def hand_over(self, conversation_id: str) -> Handoff:
        """What the action does, then the control payload: the chat opens, the relay starts."""
        chat = new_chat_session_id()
        assert await self.relay.start(conversation_id, CHANNEL, HandoffStarted(chat, 2))
        handoff = await self.relay.handoff_of(conversation_id)
        assert handoff is not None
        return handoff

    async def settle(self) -> None:
        await self.relay.wait_idle(3.0)


@asynccontextmanager
async def relay_harness(
    switchboard: Optional[Switchboard] = None,
    bot: Optional[FakeBot] = None,
    timings: Optional[OutboxTimings] = None,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    config = settings(**overrides)
    desk = Desk()
    line = RecordingLine()
    bot = bot or FakeBot()
    board = switchboard or InMemorySwitchboard()
    store = board.outbox_store
    outbox = Outbox(
        store,
        {CHANNEL: line},
        timings or OutboxTimings(backoff_base=0.01, backoff_max=0.05, poll_interval=0.05),
    )
    outbox.start()
    bot.outbox = outbox
    client = OmnideskClient(config, transport=MockTransport(desk.handle))
    with tempfile.TemporaryDirectory() as files_dir:
        files = AgentFileStore(files_dir, config.max_upload_bytes, "https://bot.example.com/f")
        relay = Relay(
            config, board, client, outbox, bot, files, "https://bot.example.com/webhooks/omnidesk"
        )
        try:
            yield Harness(relay, desk, line, bot, board, store, outbox)
        finally:
            await relay.close()
