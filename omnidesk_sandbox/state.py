"""What the sandbox remembers: chats, chatbot-log tickets, recorded calls, availability.

Plain in-memory objects, bounded by the caps in SandboxConfig. The web layer
validates a call, then asks this state to apply it; the state never sees an
invalid value. Listeners (the agent page's live stream) hear of every change.
"""

import itertools
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional

from omnidesk_sandbox import markdown
from omnidesk_sandbox.config import SandboxConfig
from omnidesk_sandbox.faults import FaultBook
from omnidesk_sandbox.validation import (
    AttachmentRequest,
    ChatbotLogRequest,
    ChatEventRequest,
    EndChatRequest,
    NewChatMessage,
)

logger = logging.getLogger(__name__)

Listener = Callable[[Dict[str, Any]], None]


@dataclass
class CustomerMessage:
    seq: int
    number: Optional[int]
    text: str
    received_at: float

    def to_json(self) -> Dict[str, Any]:
        return {
            "seq": self.seq,
            "number": self.number,
            "text": self.text,
            "html": markdown.render(self.text),
            "received_at": self.received_at,
        }


@dataclass
class ChatEvent:
    seq: int
    name: str
    received_at: float

    def to_json(self) -> Dict[str, Any]:
        return {"seq": self.seq, "name": self.name, "received_at": self.received_at}


@dataclass
class Attachment:
    seq: int
    attachment_id: int
    name: str
    content_type: str
    data: bytes = field(repr=False)
    received_at: float

    @property
    def size(self) -> int:
        return len(self.data)

    def to_json(self) -> Dict[str, Any]:
        return {
            "seq": self.seq,
            "id": self.attachment_id,
            "name": self.name,
            "content_type": self.content_type,
            "size": self.size,
            "received_at": self.received_at,
        }


@dataclass(frozen=True)
class HookpointResult:
    """What the bot's hookpoint answered: status and body, or the error that stopped the call."""

    status: Optional[int]
    body: str
    url: str = ""
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300

    def to_json(self) -> Dict[str, Any]:
        return {
            "hookpoint_status": self.status,
            "hookpoint_body": self.body,
            "hookpoint_error": self.error,
            "hookpoint_url": self.url,
        }


@dataclass
class AgentAction:
    """One thing the agent did in the chat, with the fields sent and the hookpoint's answer."""

    seq: int
    kind: str  # reply | typing | upload | end
    fields: Dict[str, str]
    at: float
    result: HookpointResult

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "seq": self.seq,
            "kind": self.kind,
            "fields": dict(self.fields),
            "at": self.at,
        }
        out.update(self.result.to_json())
        out["ok"] = self.result.ok
        return out


@dataclass
class Chat:
    chat_session_id: str
    ticket_id: int
    chat_server: str
    created_at: float
    updated_at: float
    customer_name: Optional[str] = None
    email_address: Optional[str] = None
    phone_number: Optional[str] = None
    url: Optional[str] = None
    extra_fields: Dict[str, str] = field(default_factory=dict)
    messages: List[CustomerMessage] = field(default_factory=list)
    messages_dropped: int = 0
    events: List[ChatEvent] = field(default_factory=list)
    attachments: List[Attachment] = field(default_factory=list)
    agent_actions: List[AgentAction] = field(default_factory=list)
    numbering_problems: List[str] = field(default_factory=list)
    last_number: Optional[int] = None
    seen_numbers: List[int] = field(default_factory=list)
    customer_typing: bool = False
    ended: bool = False
    ended_by: Optional[str] = None  # "customer" | "agent"
    ended_at: Optional[float] = None
    reopened: int = 0

    @property
    def status(self) -> str:
        """waiting (no agent answer yet), active, or ended: the agent page's three lists."""
        if self.ended:
            return "ended"
        if any(a.kind in ("reply", "upload") and a.result.ok for a in self.agent_actions):
            return "active"
        return "waiting"

    def to_json(self, related_tickets: Optional[List[int]] = None) -> Dict[str, Any]:
        return {
            "chat_session_id": self.chat_session_id,
            "ticket_id": self.ticket_id,
            "chat_server": self.chat_server,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "customer_name": self.customer_name,
            "email_address": self.email_address,
            "phone_number": self.phone_number,
            "url": self.url,
            "extra_fields": dict(self.extra_fields),
            "messages": [m.to_json() for m in self.messages],
            "messages_dropped": self.messages_dropped,
            "events": [e.to_json() for e in self.events],
            "attachments": [a.to_json() for a in self.attachments],
            "agent_actions": [a.to_json() for a in self.agent_actions],
            "numbering_problems": list(self.numbering_problems),
            "customer_typing": self.customer_typing,
            "ended": self.ended,
            "ended_by": self.ended_by,
            "ended_at": self.ended_at,
            "reopened": self.reopened,
            "related_tickets": related_tickets or [],
        }


@dataclass
class Ticket:
    """A chatbot-log ticket (POST /api/v2/message/chatbot)."""

    ticket_id: int
    sender: Optional[str]
    subject: str
    message: str
    brand_id: Optional[str]
    created_at: float

    def to_json(self) -> Dict[str, Any]:
        return {
            "ticket_id": self.ticket_id,
            "from": self.sender,
            "subject": self.subject,
            "message": self.message,
            "html": markdown.render(self.message),
            "brand_id": self.brand_id,
            "created_at": self.created_at,
        }


@dataclass
class FilePart:
    field: str
    filename: str
    size: int
    content_type: str

    def to_json(self) -> Dict[str, Any]:
        return {
            "field": self.field,
            "filename": self.filename,
            "size": self.size,
            "content_type": self.content_type,
        }


@dataclass
class RecordedCall:
    """One API call as it arrived, with secrets masked, and what the sandbox answered."""

    at: float
    method: str
    path: str
    endpoint: str
    query: Dict[str, str]
    content_type: str
    fields: Dict[str, str]
    files: List[FilePart]
    status: Optional[int] = None  # None: no answer (dropped or hung connection)
    body: Any = None
    fault: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        return {
            "at": self.at,
            "method": self.method,
            "path": self.path,
            "endpoint": self.endpoint,
            "query": dict(self.query),
            "content_type": self.content_type,
            "fields": dict(self.fields),
            "files": [f.to_json() for f in self.files],
            "status": self.status,
            "body": self.body,
            "fault": self.fault,
        }


class UnknownChat(LookupError):
    """No chat with this chatSessionID."""


class SandboxState:
    """All the sandbox holds. Not thread-safe: used from one event loop."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.faults = FaultBook()
        self._listeners: List[Listener] = []
        self._reset_data()

    def _reset_data(self) -> None:
        self.chats: OrderedDict[str, Chat] = OrderedDict()
        self.tickets: OrderedDict[int, Ticket] = OrderedDict()
        self.calls: Deque[RecordedCall] = deque(maxlen=self.config.max_calls)
        self.agents_online = self.config.agents_online
        self.agent_name = self.config.agent_name
        self.agent_picture = self.config.agent_picture
        self.chats_dropped = 0
        self._ticket_ids: Iterator[int] = itertools.count(1001)
        self._seq: Iterator[int] = itertools.count(1)
        self._attachment_ids: Iterator[int] = itertools.count(1)

    def reset(self) -> None:
        """Forget every chat, ticket, call and fault; back to the start-up settings."""
        self._reset_data()
        self.faults.clear()
        self._emit({"type": "reset"})

    # -- listeners ---------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, event: Dict[str, Any]) -> None:
        for listener in list(self._listeners):
            listener(event)

    def _chat_changed(self, chat: Chat) -> None:
        # Rendering a chat is a markdown pass over all its messages: do it only for
        # an agent page that listens, or every message costs more the longer its chat.
        if self._listeners:
            self._emit({"type": "chat", "chat": self.chat_json(chat)})

    # -- reading -----------------------------------------------------------------

    def chat(self, chat_session_id: str) -> Chat:
        try:
            return self.chats[chat_session_id]
        except KeyError:
            raise UnknownChat(chat_session_id) from None

    def related_tickets(self, chat: Chat) -> List[int]:
        """Chatbot-log tickets whose `from` is this chat's email address or phone number."""
        senders = {s for s in (chat.email_address, chat.phone_number) if s}
        return [t.ticket_id for t in self.tickets.values() if t.sender and t.sender in senders]

    def chat_json(self, chat: Chat) -> Dict[str, Any]:
        return chat.to_json(self.related_tickets(chat))

    def attachment(self, attachment_id: int) -> Attachment:
        for chat in self.chats.values():
            for attachment in chat.attachments:
                if attachment.attachment_id == attachment_id:
                    return attachment
        raise LookupError(f"no attachment {attachment_id}")

    # -- customer side (validated Omnidesk API calls) ----------------------------

    def customer_message(self, request: NewChatMessage) -> Chat:
        now = time.time()
        chat = self.chats.get(request.chat_session_id)
        if chat is None:
            chat = Chat(
                chat_session_id=request.chat_session_id,
                ticket_id=next(self._ticket_ids),
                chat_server=request.chat_server,
                created_at=now,
                updated_at=now,
            )
            self.chats[chat.chat_session_id] = chat
            self._drop_old_chats()
            logger.info("chat %s opened as ticket %s", chat.chat_session_id, chat.ticket_id)
        elif chat.ended:
            # Same chatSessionID, same ticket (omnidesk-api.txt): the ended chat reopens.
            chat.ended = False
            chat.ended_by = None
            chat.ended_at = None
            chat.reopened += 1
            chat.events.append(ChatEvent(next(self._seq), "reopened", now))
        chat.chat_server = request.chat_server
        chat.updated_at = now
        for name in ("customer_name", "email_address", "phone_number", "url"):
            value = getattr(request, name)
            if value is not None:
                setattr(chat, name, value)
        chat.extra_fields.update(request.extra_fields)
        self._check_numbering(chat, request.message_number)
        chat.messages.append(
            CustomerMessage(next(self._seq), request.message_number, request.message, now)
        )
        if len(chat.messages) > self.config.max_messages_per_chat:
            del chat.messages[0]
            chat.messages_dropped += 1
        chat.customer_typing = False
        self._chat_changed(chat)
        return chat

    def _check_numbering(self, chat: Chat, number: Optional[int]) -> None:
        position = len(chat.messages) + chat.messages_dropped + 1
        if number is None:
            chat.numbering_problems.append(f"message {position} has no messageNumber")
            return
        expected = 1 if chat.last_number is None else chat.last_number + 1
        if number in chat.seen_numbers:
            chat.numbering_problems.append(f"duplicate {number}")
        elif number != expected:
            chat.numbering_problems.append(f"expected {expected}, got {number}")
        chat.seen_numbers.append(number)
        chat.last_number = max(number, chat.last_number or 0)

    def _drop_old_chats(self) -> None:
        while len(self.chats) > self.config.max_chats:
            victim = next((c for c in self.chats.values() if c.ended), None)
            if victim is None:
                victim = next(iter(self.chats.values()))
            del self.chats[victim.chat_session_id]
            self.chats_dropped += 1
            self._emit({"type": "chat_dropped", "chat_session_id": victim.chat_session_id})

    def customer_event(self, request: ChatEventRequest) -> Chat:
        chat = self.chat(request.chat_session_id)
        now = time.time()
        chat.events.append(ChatEvent(next(self._seq), request.event, now))
        if len(chat.events) > self.config.max_messages_per_chat:
            del chat.events[0]
        if request.event in ("startedtyping", "stoppedtyping"):
            chat.customer_typing = request.event == "startedtyping"
        chat.updated_at = now
        self._chat_changed(chat)
        return chat

    def customer_attachment(self, request: AttachmentRequest) -> Chat:
        chat = self.chat(request.session_id)
        now = time.time()
        chat.attachments.append(
            Attachment(
                next(self._seq),
                next(self._attachment_ids),
                request.filename,
                request.content_type,
                request.data,
                now,
            )
        )
        if len(chat.attachments) > self.config.max_messages_per_chat:
            del chat.attachments[0]
        chat.chat_server = request.chat_server
        chat.updated_at = now
        self._chat_changed(chat)
        return chat

    def customer_end(self, request: EndChatRequest) -> Chat:
        chat = self.chat(request.chat_session_id)
        now = time.time()
        if chat.ended:
            chat.events.append(ChatEvent(next(self._seq), "end repeated", now))
        else:
            chat.ended, chat.ended_by, chat.ended_at = True, "customer", now
            chat.events.append(ChatEvent(next(self._seq), "ended by customer", now))
        chat.customer_typing = False
        chat.updated_at = now
        self._chat_changed(chat)
        return chat

    def chatbot_log(self, request: ChatbotLogRequest) -> Ticket:
        ticket = Ticket(
            next(self._ticket_ids),
            request.sender,
            request.subject,
            request.message,
            request.brand_id,
            time.time(),
        )
        self.tickets[ticket.ticket_id] = ticket
        while len(self.tickets) > self.config.max_tickets:
            self.tickets.popitem(last=False)
        self._emit({"type": "ticket", "ticket": ticket.to_json()})
        for chat in self.chats.values():
            if ticket.sender and ticket.sender in (chat.email_address, chat.phone_number):
                self._chat_changed(chat)
        return ticket

    # -- agent side --------------------------------------------------------------

    def agent_action(
        self, chat: Chat, kind: str, fields: Dict[str, str], result: HookpointResult
    ) -> AgentAction:
        now = time.time()
        action = AgentAction(next(self._seq), kind, fields, now, result)
        chat.agent_actions.append(action)
        if len(chat.agent_actions) > self.config.max_messages_per_chat:
            del chat.agent_actions[0]
        if kind == "end" and not chat.ended:
            chat.ended, chat.ended_by, chat.ended_at = True, "agent", now
        chat.updated_at = now
        self._chat_changed(chat)
        return action

    def set_agents_online(self, online: bool) -> None:
        self.agents_online = online
        self._emit({"type": "agents", "online": online})

    def set_agent_profile(self, name: str, picture: str) -> None:
        self.agent_name, self.agent_picture = name, picture
        self._emit({"type": "profile", "name": name, "picture": picture})

    # -- calls -------------------------------------------------------------------

    def record_call(self, call: RecordedCall) -> None:
        self.calls.append(call)
