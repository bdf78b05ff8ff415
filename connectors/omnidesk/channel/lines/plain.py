"""Any other channel that can send later: its own output channel, the agent's name as a prefix."""

from typing import Any, Dict, Mapping, Optional

from rasa.core.channels.channel import InputChannel, OutputChannel

from connectors.omnidesk.channel import rasa_compat
from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.lines.common import prefixed
from connectors.omnidesk.channel.sides import FileLink


class PlainLine:
    """Any other channel: its own output channel; the agent's name as a text prefix.

    The output channel is the one the channel gives for the conversation
    (Rasa Pro 3.19 on: ``get_output_channel_for_conversation``), else its
    ``get_output_channel``. Whether the channel took a message is what its
    output channel says: a raise is a refusal, retried by the outbox.
    """

    held_by_socket = False

    def __init__(self, channel: InputChannel, name_prefix: bool) -> None:
        self._channel = channel
        self._name_prefix = name_prefix

    def _output(self, recipient_id: str) -> OutputChannel:
        output = rasa_compat.output_channel_for(self._channel, recipient_id)
        if output is None:
            raise RuntimeError(
                f"channel {self._channel.name()} cannot send a message outside a request"
            )
        return output

    async def send_text(
        self, recipient_id: str, text: str, agent: Optional[AgentIdentity] = None
    ) -> None:
        output = self._output(recipient_id)
        await output.send_text_message(recipient_id, prefixed(text, agent, self._name_prefix))

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None:
        output = self._output(recipient_id)
        if self._name_prefix and agent is not None and agent.name:
            await output.send_text_message(recipient_id, f"{agent.name}: {file.filename}")
        if file.is_image:
            await output.send_image_url(recipient_id, file.url)
        else:
            await output.send_attachment(recipient_id, file.url)

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        return False

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        await self._output(recipient_id).send_response(recipient_id, message)

    async def send_details(self, recipient_id: str, details: Mapping[str, str]) -> bool:
        # No widget could call the customer routes; the JSON would reach the customer as text.
        return False
