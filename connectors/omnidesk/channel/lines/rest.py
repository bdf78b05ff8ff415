"""rest: Rasa's request-and-answer channel. Its customer pulls what the agent sends.

Rasa's ``rest`` answers only inside the request that brought a turn: nothing
can be sent to its customer later. So nothing is: what the agent sends waits
in the outbox, and the customer's client fetches it, by a long poll or a
Server-Sent Events stream (routes.py), or in the answer to its next turn
(``carrying_what_waits``). ``rest_message`` gives each entry the shape of
Rasa's own rest answers, with its id, the client's cursor. docs/channel.md
("rest") is the client's side of it.
"""

import asyncio
import logging
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

from rasa.core.channels.channel import InputChannel, UserMessage
from rasa.core.channels.rest import RestInput

from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.lines.common import CUSTOMER_EVENT_NAME, with_agent
from connectors.omnidesk.channel.outbox import Outbox, Pulled
from connectors.omnidesk.channel.rasa_compat import Handler
from connectors.omnidesk.channel.sides import FileLink
from connectors.omnidesk.channel.switchboard import SwitchboardError

logger = logging.getLogger(__name__)

# What a pulled message's ``custom`` says besides the handoff's details.
TYPING_KEY = "omnidesk_typing"
ENDED_KEY = "omnidesk_ended"

# RestInput's kin that are no customer channel of a bot: ``rasa shell``'s console
# (cmdline) and Rasa Enterprise's own (rasa). callback is RestInput's kin too, and pushes.
_NOT_REST = frozenset({"cmdline", "rasa", "callback"})

# The bot message keys a rest answer carries (CollectingOutputChannel's, and elements).
_BOT_KEYS = ("text", "buttons", "image", "attachment", "custom", "elements")


def is_rest(channel: InputChannel) -> bool:
    """Whether ``channel`` is rest, or a channel built on it that cannot send later.

    Its class decides, as for every channel at start-up: nothing is asked of
    the channel that could make a call.
    """
    return (
        isinstance(channel, RestInput)
        and str(channel.name()) not in _NOT_REST
        and not _sends_later(type(channel))
    )


def _sends_later(channel_class: type) -> bool:
    """Whether the class gives an output channel of its own (Rasa Pro 3.19's per conversation too)."""
    for name in ("get_output_channel", "get_output_channel_for_conversation"):
        base = getattr(InputChannel, name, None)
        own = getattr(channel_class, name, None)
        if own is not None and own is not base:
            return True
    return False


class RestLine:
    """rest: nothing is sent; the customer's client pulls (``pulled``).

    The outbox's drainer never sends on it. Sending directly (a notice while the
    outbox cannot store it) is impossible on rest, and says so.
    """

    held_by_socket = False
    pulled = True

    def __init__(self, channel: InputChannel) -> None:
        self._name = str(channel.name())

    def _cannot(self) -> RuntimeError:
        return RuntimeError(
            f"channel {self._name} answers only inside a request: its customer fetches "
            "messages from the outbox, which is unreachable now"
        )

    async def send_text(
        self, recipient_id: str, text: str, agent: Optional[AgentIdentity] = None
    ) -> None:
        raise self._cannot()

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None:
        raise self._cannot()

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        raise self._cannot()

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        raise self._cannot()

    async def send_details(self, recipient_id: str, details: Mapping[str, str]) -> bool:
        raise self._cannot()


def rest_message(pulled: Pulled) -> Dict[str, Any]:
    """An outbox entry as Rasa's rest answers a message, with its ``id``.

    Agent text: ``text`` and ``agent``; a file: ``image`` or ``attachment`` (a
    URL) with ``filename``; a bot message: its text, buttons, image, attachment,
    custom and elements in one message; typing, the handoff's details and the
    end of the chat: ``custom`` with ``omnidesk_typing``, ``omnidesk_customer``
    or ``omnidesk_ended``.
    """
    entry = pulled.entry
    item = entry.item
    message: Dict[str, Any] = {"id": pulled.entry_id, "recipient_id": entry.conversation_id}
    if item.kind == "text":
        message["text"] = item.text
        with_agent(message, item.agent)
    elif item.kind == "file" and item.file is not None:
        message["image" if item.file.is_image else "attachment"] = item.file.url
        message["filename"] = item.file.filename
        with_agent(message, item.agent)
    elif item.kind == "response" and item.response is not None:
        response = dict(item.response)
        if not response.get("buttons") and response.get("quick_replies"):
            response["buttons"] = response["quick_replies"]
        message.update({key: response[key] for key in _BOT_KEYS if response.get(key)})
    elif item.kind == "details" and item.details is not None:
        message["custom"] = {CUSTOMER_EVENT_NAME: dict(item.details)}
    elif item.kind == "ended":
        message["custom"] = {ENDED_KEY: {"outcome": item.outcome}}
    else:
        message["custom"] = {TYPING_KEY: item.typing}
    return message


def is_typing(message: Mapping[str, Any]) -> bool:
    custom = message.get("custom")
    return isinstance(custom, Mapping) and TYPING_KEY in custom


def is_end(message: Mapping[str, Any]) -> bool:
    custom = message.get("custom")
    return isinstance(custom, Mapping) and ENDED_KEY in custom


def carrying_what_waits(handle: Handler, outbox: Callable[[], Optional[Outbox]]) -> Handler:
    """rest's message handler: the answer to a turn also carries what waits for the customer.

    What waited before the turn comes before the bot's answer, what arrived
    during it (the handoff's details when this turn escalated) after it. Only
    what no long poll or stream handed out is carried, and it is taken off:
    the answer is the client's cursor too (docs/channel.md, "rest").
    """

    async def answer(message: UserMessage) -> Any:
        collector = message.output_channel
        began = time.time()
        result = await handle(message)
        running = outbox()
        if running is not None and _can_carry(collector):
            await _carry(running, collector, str(message.sender_id), began)
        return result

    return answer


def _can_carry(collector: Any) -> bool:
    return isinstance(getattr(collector, "messages", None), (list, asyncio.Queue))


async def _carry(outbox: Outbox, collector: Any, recipient_id: str, began: float) -> None:
    try:
        taken = await outbox.take_for_answer(recipient_id)
    except SwitchboardError as error:
        logger.warning(
            "The answer to conversation %s carries no waiting messages (they stay): %s",
            recipient_id,
            error,
        )
        return
    if not taken:
        return
    before: List[Dict[str, Any]] = []
    after: List[Dict[str, Any]] = []
    for pulled in taken:
        (before if pulled.entry.stored_at < began else after).append(rest_message(pulled))
    messages = collector.messages
    if isinstance(messages, list):
        messages[:0] = before
        messages.extend(after)
    else:
        # rest's ?stream=true: the bot's messages have gone already.
        for message in before + after:
            await messages.put(message)
    logger.debug(
        "The answer to conversation %s carries %d waiting messages.", recipient_id, len(taken)
    )
