"""socket.io: the Rasa widget's channel. The agent's words arrive as the bot's event.

Agent text and files carry ``{"agent": {"name", "picture"}}`` beside Rasa's own
payload; typing is the ``agent_typing`` event and the handoff's details the
``omnidesk_customer`` event (docs/channel.md). A customer is reached only
through a socket they hold, so the outbox sends from the instance it is
connected to (``held_by_socket``).
"""

from typing import Any, Dict, List, Mapping, Optional

from rasa.core.channels.socketio import SocketIOInput

from connectors.omnidesk.channel import rasa_compat
from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.lines.common import CUSTOMER_EVENT_NAME, with_agent
from connectors.omnidesk.channel.sides import FileLink

AGENT_TYPING_EVENT = "agent_typing"


def socketio_payloads(message: Mapping[str, Any]) -> List[Any]:
    """The socket.io payloads of a bot message, as Rasa's SocketIOOutput emits them.

    Text is split at blank lines; buttons or quick replies go with the last
    part; custom JSON emits its "data" (as Rasa's send_custom_json does); an
    image, an attachment and each element are payloads of their own.
    """
    payloads: List[Any] = []
    text = message.get("text")
    buttons = message.get("buttons") or message.get("quick_replies")
    if text:
        parts = str(text).strip().split("\n\n") or [str(text)]
        payloads.extend({"text": part} for part in parts)
        if buttons:
            payloads[-1]["quick_replies"] = [
                {"content_type": "text", "title": b.get("title"), "payload": b.get("payload")}
                for b in buttons
                if isinstance(b, Mapping)
            ]
    custom = message.get("custom")
    if isinstance(custom, Mapping) and custom.get("data") is not None:
        payloads.append(custom["data"])
    if message.get("image"):
        payloads.append({"attachment": {"type": "image", "payload": {"src": message["image"]}}})
    if message.get("attachment"):
        payloads.append({"attachment": message["attachment"]})
    for element in message.get("elements") or []:
        payloads.append(
            {
                "attachment": {
                    "type": "template",
                    "payload": {"template_type": "generic", "elements": element},
                }
            }
        )
    return payloads


class SocketIOLine:
    """socket.io: the bot event carries {"text", "agent": {"name", "picture"}}.

    An emit to a room no socket is in returns normally, so the outbox sends
    only from the instance a socket of the session is connected to
    (``held_by_socket``): an emit there reaches a live socket, and an instance
    that died cannot have taken a message for its sockets (the customer's next
    instance sends it).
    """

    held_by_socket = True

    def __init__(self, channel: SocketIOInput) -> None:
        self._channel = channel

    async def _emit(self, event: str, data: Dict[str, Any], room: str) -> None:
        sio = rasa_compat.socketio_server(self._channel)
        if sio is None:
            raise RuntimeError("the socket.io server is not running in this process")
        await sio.emit(event, data, room=room, namespace=self._channel.namespace)

    async def send_text(
        self, recipient_id: str, text: str, agent: Optional[AgentIdentity] = None
    ) -> None:
        data = with_agent({"text": text}, agent)
        await self._emit(self._channel.bot_message_evt, data, recipient_id)

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None:
        if file.is_image:
            attachment: Dict[str, Any] = {"type": "image", "payload": {"src": file.url}}
        else:
            attachment = {"type": "file", "payload": {"src": file.url, "name": file.filename}}
        data = with_agent({"attachment": attachment}, agent)
        await self._emit(self._channel.bot_message_evt, data, recipient_id)

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        await self._emit(AGENT_TYPING_EVENT, {"typing": typing}, recipient_id)
        return True

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        """A bot message, in the payloads Rasa's own SocketIOOutput emits for it."""
        for payload in socketio_payloads(message):
            await self._emit(self._channel.bot_message_evt, payload, recipient_id)

    async def send_details(self, recipient_id: str, details: Mapping[str, str]) -> bool:
        await self._emit(CUSTOMER_EVENT_NAME, dict(details), recipient_id)
        return True
