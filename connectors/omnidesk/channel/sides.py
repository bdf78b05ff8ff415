"""The two sides the relay talks to, as protocols: the customer's line and the bot.

The relay, the outbox, the tracker record and the sweeper know neither Sanic
nor Rasa (tests/architecture checks it); they see the customer through
``CustomerLine`` (lines/ implements it per wrapped channel) and Rasa
through ``BotSide`` (rasa_bot.py implements it on a running Rasa server).
"""

import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Protocol, Sequence, runtime_checkable

from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.switchboard import Handoff
from connectors.omnidesk.handoff import HandoffOutcome


class Undeliverable(Exception):
    """The customer's channel refused a message for good: retrying cannot help.

    A 24-hour window that closed, a bot the customer blocked, an unknown user.
    The outbox stops retrying it, and the agent is told. Any other exception a
    line raises is a temporary refusal, tried again with backoff.
    """


@dataclass(frozen=True)
class FileLink:
    """A file the customer is sent as a link: where it is, its name, and how to show it."""

    url: str
    filename: str
    is_image: bool


class CustomerLine(Protocol):
    """How to reach a customer on one wrapped channel, outside a request.

    ``held_by_socket`` is true for a channel whose customer is reached only
    through the socket they hold (socket.io): the outbox then sends from the
    instance that socket is connected to, and waits while they are away.
    A line may also say ``pulled = True``: its channel cannot be sent to at all
    (rest), the customer's client fetches what waits, and the outbox sends
    nothing (``is_pulled``). A line that does not say it is sent to.
    """

    held_by_socket: bool

    async def send_text(
        self, recipient_id: str, text: str, agent: Optional[AgentIdentity] = None
    ) -> None: ...

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None: ...

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        """Show or hide the agent's typing; False when the channel cannot show it."""
        ...

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        """A bot message as Rasa utters it (text, buttons, image, attachment, custom, ...)."""
        ...

    async def send_details(self, recipient_id: str, details: Mapping[str, str]) -> bool:
        """Hand the customer's channel its handoff details (the customer token, the routes).

        False when the channel has no widget that could use them (plain channels).
        """
        ...


@runtime_checkable
class RoutedLine(Protocol):
    """A line whose channel needs the conversation's route to reply (``Handoff.route``).

    Slack replies in the channel and thread the customer wrote in, Teams to a
    conversation reference; the conversation id alone does not say where. The
    outbox asks such a line for the line ``along`` an entry's route (None when
    the handoff kept none) before it sends.
    """

    def along(self, route: Optional[Mapping[str, str]]) -> CustomerLine: ...


def is_pulled(line: object) -> bool:
    """Whether the customer of ``line`` fetches what waits rather than being sent it."""
    return bool(getattr(line, "pulled", False))


@dataclass(frozen=True)
class RecordEntry:
    """One relayed turn for the tracker: who said it, in which chat."""

    role: str  # "customer" | "agent"
    text: str
    chat_session_id: str
    timestamp: float
    agent_name: Optional[str] = None
    attachment_url: Optional[str] = None
    message_number: Optional[int] = None  # the customer turn's messageNumber, when it took one
    delivered: bool = True  # False: Omnidesk never confirmed it (kept, marked undelivered)
    # Goes into the event's metadata, so a retried tracker write skips what is there.
    entry_id: str = field(default_factory=lambda: uuid.uuid4().hex)


class BotSide(Protocol):
    """Rasa, as the relay sees it."""

    def response_text(self, name: str) -> Optional[str]:
        """The first text variation of a response in the bot's domain, if any."""
        ...

    async def record(self, conversation_id: str, entries: Sequence[RecordEntry]) -> None:
        """Append relayed turns to the conversation's tracker."""
        ...

    async def hand_back(self, handoff: Handoff, outcome: HandoffOutcome) -> bool:
        """Give the conversation back to the bot, which tells the customer.

        False when the bot cannot (its domain lacks the end-of-chat intent):
        the relay then tells the customer itself.
        """
        ...
