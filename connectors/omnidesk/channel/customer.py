"""The output channels the connector puts in Rasa's hands.

``WrappedOutput`` stands in for the wrapped channel's output channel in every
turn: it passes everything through, except the handoff's control payload,
which it takes off the stream (the customer never sees it) and hands to the
relay. ``OutboxOutput`` takes the bot's words when it takes a conversation
back and puts them in the handoff's outbox. How each channel reaches a
customer outside a request is in lines/.
"""

import logging
from typing import Any, Awaitable, Callable, Dict, Mapping, Optional

from rasa.core.channels.channel import OutputChannel

from connectors.omnidesk.channel import rasa_compat
from connectors.omnidesk.channel.outbox import Outbox, ToCustomer
from connectors.omnidesk.channel.switchboard import Handoff, SwitchboardError
from connectors.omnidesk.handoff import (
    ControlPayloadError,
    HandoffStarted,
    is_control_payload,
    parse_control_payload,
)

logger = logging.getLogger(__name__)

# Registers the handoff (conversation, channel, what started, the turn's route);
# False when it could not be (the customer was told).
OnHandoffStarted = Callable[
    [str, str, HandoffStarted, Optional[Mapping[str, str]]], Awaitable[bool]
]

_CONTENT_KEYS = ("text", "buttons", "quick_replies", "image", "attachment", "elements", "custom")


@rasa_compat.pass_on_output_members
class WrappedOutput(OutputChannel):  # type: ignore[misc]
    """The wrapped channel's output channel, with the control payload taken off.

    ``route`` is where the turn's customer gets replies on a channel that needs
    more than the conversation id (lines/ reads it from the turn); a handoff
    this turn starts keeps it.
    """

    def __init__(
        self,
        inner: OutputChannel,
        channel: str,
        on_started: OnHandoffStarted,
        route: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.inner = inner
        super().__init__()
        self.channel = channel
        self.route = route
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
        if not await self._on_started(recipient_id, self.channel, started, self.route):
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
                handoff.conversation_id,
                handoff.channel,
                handoff.chat_session_id,
                item,
                handoff.route,
            )
        except SwitchboardError as error:
            logger.warning(
                "Outbox unreachable (%s): the bot's answer to conversation %s goes to its "
                "channel directly.",
                error,
                handoff.conversation_id,
            )
            await outbox.send_now(handoff.conversation_id, handoff.channel, item, handoff.route)

    return OutboxOutput(put, handoff.channel)
