"""The customer's side of a wrapped channel: its output, caught and extended.

``WrappedOutput`` stands in for the wrapped channel's output channel in every
turn: it passes everything through, except the handoff's control payload,
which it takes off the stream (the customer never sees it) and hands to the
relay. The ``*Line`` classes reach a customer outside a request, for agent
messages, files and typing: socket.io and callback carry the agent's name and
picture as extra keys; any other channel gets plain text, optionally prefixed
with the agent's name.
"""

import logging
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional

from rasa.core.channels.callback import CallbackInput
from rasa.core.channels.channel import CollectingOutputChannel, InputChannel, OutputChannel
from rasa.core.channels.socketio import SocketIOInput

from connectors.omnidesk.channel import rasa_compat
from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.outbox import Outbox, ToCustomer
from connectors.omnidesk.channel.sides import CustomerLine, FileLink
from connectors.omnidesk.channel.switchboard import Handoff, SwitchboardError
from connectors.omnidesk.handoff import (
    ControlPayloadError,
    HandoffStarted,
    is_control_payload,
    parse_control_payload,
)

logger = logging.getLogger(__name__)

# Registers the handoff; False when it could not be (the customer was told).
OnHandoffStarted = Callable[[str, str, HandoffStarted], Awaitable[bool]]

AGENT_TYPING_EVENT = "agent_typing"
# What the customer's own channel hears when a handoff starts (docs/channel.md).
CUSTOMER_EVENT_NAME = "omnidesk_customer"
_CONTENT_KEYS = ("text", "buttons", "quick_replies", "image", "attachment", "elements", "custom")


@rasa_compat.pass_on_output_members
class WrappedOutput(OutputChannel):  # type: ignore[misc]
    """The wrapped channel's output channel, with the control payload taken off."""

    def __init__(self, inner: OutputChannel, channel: str, on_started: OnHandoffStarted) -> None:
        self.inner = inner
        super().__init__()
        self.channel = channel
        self._on_started = on_started
        # Set when the handoff of this turn could not be registered: the action's
        # "you're connected" that follows the payload would be false, so the rest
        # of the turn's messages are dropped (the customer was told instead).
        self._handoff_failed = False

    def attach_tracker_state(self, tracker: Any) -> None:
        rasa_compat.attach_tracker_state(self, self.inner, tracker)

    def name(self) -> str:
        return str(self.inner.name())

    def __getattr__(self, item: str) -> Any:
        # CollectingOutputChannel.messages and the like stay reachable.
        return getattr(self.inner, item)

    async def _take_control(self, recipient_id: str, payload: Dict[str, Any]) -> None:
        try:
            started = parse_control_payload(payload)
        except ControlPayloadError as error:
            logger.error(
                "Conversation %s sent a malformed handoff control payload (%s); "
                "it stays with the bot.",
                recipient_id,
                error,
            )
            return
        if not await self._on_started(recipient_id, self.channel, started):
            self._handoff_failed = True

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> Any:
        custom = message.get("custom")
        if isinstance(custom, dict) and is_control_payload(custom):
            message = {key: value for key, value in message.items() if key != "custom"}
            await self._take_control(recipient_id, custom)
            if not any(message.get(key) for key in _CONTENT_KEYS):
                return None
        if self._handoff_failed:
            return None
        return await self.inner.send_response(recipient_id, message)

    async def send_custom_json(
        self, recipient_id: str, json_message: Dict[str, Any], **kwargs: Any
    ) -> None:
        if is_control_payload(json_message):
            await self._take_control(recipient_id, json_message)
            return
        if self._handoff_failed:
            return
        await self.inner.send_custom_json(recipient_id, json_message, **kwargs)

    async def send_text_message(self, recipient_id: str, text: str, **kwargs: Any) -> None:
        await self.inner.send_text_message(recipient_id, text, **kwargs)

    async def send_image_url(self, recipient_id: str, image: str, **kwargs: Any) -> None:
        await self.inner.send_image_url(recipient_id, image, **kwargs)

    async def send_attachment(self, recipient_id: str, attachment: Any, **kwargs: Any) -> None:
        await self.inner.send_attachment(recipient_id, attachment, **kwargs)

    async def send_text_with_buttons(
        self, recipient_id: str, text: str, buttons: Any, **kwargs: Any
    ) -> None:
        await self.inner.send_text_with_buttons(recipient_id, text, buttons, **kwargs)

    async def send_quick_replies(
        self, recipient_id: str, text: str, quick_replies: Any, **kwargs: Any
    ) -> None:
        await self.inner.send_quick_replies(recipient_id, text, quick_replies, **kwargs)

    async def send_elements(self, recipient_id: str, elements: Any, **kwargs: Any) -> None:
        await self.inner.send_elements(recipient_id, elements, **kwargs)


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


class OutboxOutput(OutputChannel):  # type: ignore[misc]
    """An output channel that puts the bot's messages in a handoff's outbox.

    The bot's words when it takes a conversation back (the answer to the
    end-of-chat intent) go this way, so they reach the customer after the
    agent's last messages, on every channel, and wait for a customer who is away.
    """

    def __init__(self, put: Callable[[Dict[str, Any]], Awaitable[None]], channel: str) -> None:
        super().__init__()
        self._put = put
        self._channel = channel

    def name(self) -> str:
        return self._channel

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        await self._put(dict(message))

    async def send_text_message(self, recipient_id: str, text: str, **kwargs: Any) -> None:
        await self._put({"text": text})

    async def send_custom_json(
        self, recipient_id: str, json_message: Dict[str, Any], **kwargs: Any
    ) -> None:
        await self._put({"custom": json_message})


def outbox_output(outbox: Outbox, handoff: Handoff) -> OutboxOutput:
    """An output channel into ``handoff``'s outbox, for the bot's words at the end of a chat.

    When the outbox cannot store them (Redis is down) they go to the customer's
    channel directly rather than not at all.
    """

    async def put(message: Dict[str, Any]) -> None:
        item = ToCustomer("response", response=message, notice="end")
        try:
            await outbox.put(
                handoff.conversation_id, handoff.channel, handoff.chat_session_id, item
            )
        except SwitchboardError as error:
            logger.warning(
                "Outbox unreachable (%s): the bot's answer to conversation %s goes to its "
                "channel directly.",
                error,
                handoff.conversation_id,
            )
            await outbox.send_now(handoff.conversation_id, handoff.channel, item)

    return OutboxOutput(put, handoff.channel)


def _with_agent(payload: Dict[str, Any], agent: Optional[AgentIdentity]) -> Dict[str, Any]:
    """``payload`` with the agent's name and picture under "agent", when there are any."""
    if agent is not None and (agent.name is not None or agent.picture is not None):
        payload["agent"] = {"name": agent.name, "picture": agent.picture}
    return payload


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
        data = _with_agent({"text": text}, agent)
        await self._emit(self._channel.bot_message_evt, data, recipient_id)

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None:
        if file.is_image:
            attachment: Dict[str, Any] = {"type": "image", "payload": {"src": file.url}}
        else:
            attachment = {"type": "file", "payload": {"src": file.url, "name": file.filename}}
        data = _with_agent({"attachment": attachment}, agent)
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


class CallbackLine:
    """callback: posts JSON to the app backend, like CallbackOutput, with errors raised.

    Agent text: {"recipient_id", "text", "agent": {...}}; a file: "image" or
    "attachment" (a URL) and "filename"; typing: {"recipient_id", "typing": bool}.
    """

    held_by_socket = False

    def __init__(self, channel: CallbackInput) -> None:
        self._endpoint = channel.callback_endpoint

    async def _post(self, body: Dict[str, Any]) -> None:
        await self._endpoint.request("post", content_type="application/json", json=body)

    async def send_text(
        self, recipient_id: str, text: str, agent: Optional[AgentIdentity] = None
    ) -> None:
        await self._post(_with_agent({"recipient_id": recipient_id, "text": text}, agent))

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None:
        body: Dict[str, Any] = {"recipient_id": recipient_id, "filename": file.filename}
        body["image" if file.is_image else "attachment"] = file.url
        await self._post(_with_agent(body, agent))

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        await self._post({"recipient_id": recipient_id, "typing": typing})
        return True

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        """A bot message, posted in the shape Rasa's CallbackOutput posts it."""
        collector = CollectingOutputChannel()
        await collector.send_response(recipient_id, message)
        for body in collector.messages:
            await self._post(body)

    async def send_details(self, recipient_id: str, details: Mapping[str, str]) -> bool:
        await self._post({"recipient_id": recipient_id, CUSTOMER_EVENT_NAME: dict(details)})
        return True


class PlainLine:
    """Any other channel: its own output channel; the agent's name as a text prefix."""

    held_by_socket = False

    def __init__(self, channel: InputChannel, name_prefix: bool) -> None:
        self._channel = channel
        self._name_prefix = name_prefix

    def _output(self) -> OutputChannel:
        output = self._channel.get_output_channel()
        if output is None:
            raise RuntimeError(
                f"channel {self._channel.name()} cannot send a message outside a request"
            )
        return output

    def _prefixed(self, text: str, agent: Optional[AgentIdentity]) -> str:
        if self._name_prefix and agent is not None and agent.name:
            return f"{agent.name}: {text}"
        return text

    async def send_text(
        self, recipient_id: str, text: str, agent: Optional[AgentIdentity] = None
    ) -> None:
        await self._output().send_text_message(recipient_id, self._prefixed(text, agent))

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None:
        output = self._output()
        if self._name_prefix and agent is not None and agent.name:
            await output.send_text_message(recipient_id, f"{agent.name}: {file.filename}")
        if file.is_image:
            await output.send_image_url(recipient_id, file.url)
        else:
            await output.send_attachment(recipient_id, file.url)

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        return False

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        await self._output().send_response(recipient_id, message)

    async def send_details(self, recipient_id: str, details: Mapping[str, str]) -> bool:
        # No widget could call the customer routes; the JSON would reach the customer as text.
        return False


def line_for(channel: InputChannel, name_prefix: bool) -> CustomerLine:
    """The best way to reach a customer of ``channel`` outside a request."""
    if isinstance(channel, SocketIOInput):
        return SocketIOLine(channel)
    if isinstance(channel, CallbackInput):
        return CallbackLine(channel)
    return PlainLine(channel, name_prefix)
