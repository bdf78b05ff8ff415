"""What the connector sends a customer, as the outbox keeps it.

``ToCustomer`` is one item (text, an agent file, typing, the handoff's details) and ``send_to`` sends
it on a customer's line; ``OutboxEntry`` is an item with what is needed to send
it after the handoff is gone, and its JSON as the outbox stores it (outbox.py,
outbox_store.py). Nothing here imports rasa or sanic.
"""

import json
import logging
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.sides import CustomerLine, FileLink

logger = logging.getLogger(__name__)

DELIVERY_TIMEOUT = 10.0  # seconds one entry may take to reach the customer's channel


@dataclass(frozen=True)
class ToCustomer:
    """One thing for the customer: text (agent's or a notice), an agent file, typing,
    or the handoff's details (the customer token and the routes it opens)."""

    kind: str  # "text" | "file" | "typing" | "details"
    text: str = ""
    file: Optional[FileLink] = None
    typing: bool = False
    agent: Optional[AgentIdentity] = None
    details: Optional[Mapping[str, str]] = None
    # A connector notice's text: "notice", or "end" for the end-of-chat message.
    notice: str = ""

    @property
    def metric_kind(self) -> str:
        """What omnidesk_agent_deliveries_total calls it: message, file, typing, notice, end."""
        if self.notice:
            return self.notice
        # The handoff's details are the connector's own, like a notice.
        return {"text": "message", "file": "file", "details": "notice"}.get(self.kind, "typing")

    def describe(self) -> str:
        names = {"text": "message", "file": "agent file", "details": "handoff details"}
        return names.get(self.kind, "agent typing")

    def to_dict(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"kind": self.kind}
        if self.text:
            data["text"] = self.text
        if self.file is not None:
            data["file"] = {
                "url": self.file.url,
                "filename": self.file.filename,
                "is_image": self.file.is_image,
            }
        if self.kind == "typing":
            data["typing"] = self.typing
        if self.agent is not None:
            data["agent"] = {"name": self.agent.name, "picture": self.agent.picture}
        if self.details is not None:
            data["details"] = dict(self.details)
        if self.notice:
            data["notice"] = self.notice
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ToCustomer":
        file = data.get("file")
        agent = data.get("agent")
        details = data.get("details")
        return cls(
            kind=str(data["kind"]),
            text=str(data.get("text", "")),
            file=(
                FileLink(str(file["url"]), str(file["filename"]), bool(file["is_image"]))
                if isinstance(file, Mapping)
                else None
            ),
            typing=bool(data.get("typing", False)),
            agent=(
                AgentIdentity(name=agent.get("name"), picture=agent.get("picture"))
                if isinstance(agent, Mapping)
                else None
            ),
            details=(
                {str(key): str(value) for key, value in details.items()}
                if isinstance(details, Mapping)
                else None
            ),
            notice=str(data.get("notice", "")),
        )

    @classmethod
    def from_json(cls, raw: str) -> "ToCustomer":
        return cls.from_dict(json.loads(raw))


async def send_to(line: CustomerLine, conversation_id: str, item: ToCustomer) -> None:
    """Send ``item`` on ``line``; raises whatever the customer's channel raised."""
    if item.kind == "text":
        await line.send_text(conversation_id, item.text, item.agent)
    elif item.kind == "file" and item.file is not None:
        await line.send_file(conversation_id, item.file, item.agent)
    elif item.kind == "details" and item.details is not None:
        if not await line.send_details(conversation_id, item.details):
            logger.debug(
                "The channel of conversation %s has no use for handoff details.", conversation_id
            )
    elif not await line.send_typing(conversation_id, item.typing):
        logger.debug("The channel of conversation %s cannot show typing; dropped.", conversation_id)


@dataclass(frozen=True)
class OutboxEntry:
    """One waiting item, with what is needed to send it after the handoff is gone."""

    conversation_id: str
    channel: str
    chat_session_id: str
    stored_at: float
    item: ToCustomer

    def to_json(self) -> str:
        return json.dumps(
            {
                "c": self.conversation_id,
                "ch": self.channel,
                "chat": self.chat_session_id,
                "at": self.stored_at,
                "item": self.item.to_dict(),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, raw: str) -> "OutboxEntry":
        data = json.loads(raw)
        return cls(
            conversation_id=str(data["c"]),
            channel=str(data["ch"]),
            chat_session_id=str(data["chat"]),
            stored_at=float(data["at"]),
            item=ToCustomer.from_dict(data["item"]),
        )
