"""Any other channel that can send later: its own output channel, the agent's name as a prefix."""

from typing import Any, Dict, Mapping, Optional

from rasa.core.channels.channel import InputChannel, OutputChannel

from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.sides import FileLink


class PlainLine:
    """Any other channel: its own output channel; the agent's name as a text prefix."""

    held_by_socket = False
    pulled = False

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
