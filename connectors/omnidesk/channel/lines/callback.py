"""callback: posts JSON to the app backend, as Rasa's CallbackOutput does, with errors raised.

Rasa Pro's own CallbackOutput posts from a background queue and never tells
whether the backend took a message; this line posts itself, so a refusal stays
in the outbox and is tried again.
"""

from typing import Any, Dict, Mapping, Optional

from rasa.core.channels.callback import CallbackInput
from rasa.core.channels.channel import CollectingOutputChannel

from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.lines.common import CUSTOMER_EVENT_NAME, with_agent
from connectors.omnidesk.channel.sides import FileLink


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
        await self._post(with_agent({"recipient_id": recipient_id, "text": text}, agent))

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None:
        body: Dict[str, Any] = {"recipient_id": recipient_id, "filename": file.filename}
        body["image" if file.is_image else "attachment"] = file.url
        await self._post(with_agent(body, agent))

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
