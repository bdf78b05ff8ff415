"""facebook (Messenger): Rasa's own ``MessengerBot`` formats, the line sends and reads the answer.

Rasa's Messenger output posts with fbmessenger's blocking ``requests`` inside
async methods and never looks at what the Send API answered (fbmessenger
returns the answer's JSON and never raises), so a reply Facebook refused was
counted delivered. Here ``MessengerBot`` only shapes the messages, into a
client that keeps them (``_Kept``); the line posts each with fbmessenger in a
worker thread, off the event loop, and reads Graph's answer.

Messenger's policy: a page may answer within 24 hours of the person's last
message; a human agent may answer up to 7 days after it with the
``HUMAN_AGENT`` message tag, which needs Meta's Human Agent permission for the
app. Agent messages and files carry that tag (``messenger_human_agent_tag``,
on by default); the connector's notices and the bot's own words do not.
"""

from typing import Any, Dict, List, Mapping, Optional, Tuple

from fbmessenger import MessengerClient
from rasa.core.channels.facebook import FacebookInput, MessengerBot

from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.lines.common import (
    API_TIMEOUT,
    agent_caption,
    off_the_loop,
    prefixed,
)
from connectors.omnidesk.channel.sides import FileLink, Undeliverable

# Graph's error codes for a send no retry changes: (#10) outside the allowed
# window or not permitted, (#100) no such person or a parameter Graph refuses,
# (#200) and (#230) a permission the page lacks, (#551) the person is not
# available (blocked the page, left Messenger). Rate limits (#4, #32, #613),
# temporary failures (#1, #2, is_transient) and a token Graph does not take
# (#190) are tried again.
REFUSED_FOR_GOOD = frozenset({10, 100, 200, 230, 551})

# (what, payload or sender action, recipient)
Send = Tuple[str, Any, str]


class MessengerRefused(RuntimeError):
    """Graph refused a send for now (rate limit, its own failure, the page's token)."""


class _Kept:
    """Takes what Rasa's MessengerBot would send, in order, and sends nothing."""

    def __init__(self) -> None:
        self.sends: List[Send] = []

    def send(
        self, payload: Any, recipient_id: str, messaging_type: str = "RESPONSE", **_: Any
    ) -> None:
        self.sends.append(("message", payload, recipient_id))

    def send_action(self, sender_action: Any, recipient_id: str, **_: Any) -> None:
        self.sends.append(("action", sender_action, recipient_id))


def refusal_of(answer: Any) -> Optional[str]:
    """Graph's refusal for good in a Send API answer; None when it took the message.

    Raises ``MessengerRefused`` for a refusal worth retrying.
    """
    if not isinstance(answer, Mapping):
        raise MessengerRefused(f"the Send API answered {type(answer).__name__}, not an object")
    error = answer.get("error")
    if error is None:
        return None
    if not isinstance(error, Mapping):
        raise MessengerRefused(f"the Send API answered an unreadable error: {error!r}")
    code = error.get("code")
    message = str(error.get("message") or "no message")
    subcode = error.get("error_subcode")
    described = f"Messenger (#{code}{f'/{subcode}' if subcode else ''}): {message}"
    if code in REFUSED_FOR_GOOD and not error.get("is_transient"):
        return described
    raise MessengerRefused(described)


class FacebookLine:
    """facebook: text (``Anna: `` prefix), pictures as image attachments, other files as
    file attachments, typing as the typing_on/typing_off sender actions."""

    held_by_socket = False

    def __init__(self, channel: FacebookInput, name_prefix: bool, human_agent_tag: bool) -> None:
        self._token = channel.fb_access_token
        self._name_prefix = name_prefix
        self._human_agent_tag = human_agent_tag

    def _post(self, sends: List[Send], tagged: bool) -> None:
        """Post each send and read its answer (blocking: run off the loop)."""
        client = MessengerClient(self._token)
        try:
            for what, payload, recipient in sends:
                if what == "action":
                    answer = client.send_action(payload, recipient, timeout=API_TIMEOUT)
                elif tagged:
                    answer = client.send(
                        payload, recipient, "MESSAGE_TAG", tag="HUMAN_AGENT", timeout=API_TIMEOUT
                    )
                else:
                    answer = client.send(payload, recipient, "RESPONSE", timeout=API_TIMEOUT)
                reason = refusal_of(answer)
                if reason is not None:
                    raise Undeliverable(reason)
        finally:
            client.session.close()

    async def _send(self, sends: List[Send], from_agent: bool) -> None:
        await off_the_loop(self._post, sends, from_agent and self._human_agent_tag)

    async def send_text(
        self, recipient_id: str, text: str, agent: Optional[AgentIdentity] = None
    ) -> None:
        kept = _Kept()
        await MessengerBot(kept).send_text_message(
            recipient_id, prefixed(text, agent, self._name_prefix)
        )
        # An agent's message comes with the agent (even unnamed); a notice comes without.
        await self._send(kept.sends, from_agent=agent is not None)

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None:
        kind = "image" if file.is_image else "file"
        sends: List[Send] = []
        caption = agent_caption(file, agent, self._name_prefix)
        if caption is not None:
            sends.append(("message", {"text": caption}, recipient_id))
        attachment = {"type": kind, "payload": {"url": file.url, "is_reusable": False}}
        sends.append(("message", {"attachment": attachment}, recipient_id))
        await self._send(sends, from_agent=True)

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        action = "typing_on" if typing else "typing_off"
        await self._send([("action", action, recipient_id)], from_agent=False)
        return True

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        kept = _Kept()
        await MessengerBot(kept).send_response(recipient_id, message)
        await self._send(kept.sends, from_agent=False)

    async def send_details(self, recipient_id: str, details: Mapping[str, str]) -> bool:
        return False
