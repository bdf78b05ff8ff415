"""twilio (SMS and WhatsApp): Rasa's own ``TwilioOutput``, sending with twilio's async client.

Rasa's ``TwilioOutput`` calls twilio's blocking client inside async methods and
only logs what Twilio refused, so a reply outside WhatsApp's 24-hour window
was counted delivered. Here the same output (its texts in parts, its media and
custom JSON) sends through ``_Checked._send_message``: twilio's own async
client where the installed twilio has one (twilio 8 on), else the blocking one
in a worker thread. Twilio's 400 and 404 answers (63016 outside the WhatsApp
window, 21610 a customer who unsubscribed, 21211 a number that is none) are
refusals for good; 401, 403, 429 and Twilio's 5xx are tried again.

Twilio may also take a message (201) and fail it later: every agent message
carries a ``StatusCallback`` to the connector's ``/twilio/status`` route
(routes.py), which checks Twilio's ``X-Twilio-Signature`` with the channel's
``auth_token`` (``signature_ok``) and tells the agent of an ``undelivered`` or
``failed`` one.
"""

from typing import Any, Callable, Dict, Mapping, Optional
from urllib.parse import urlencode

from rasa.core.channels.twilio import TwilioInput, TwilioOutput

from connectors.omnidesk.channel.hookpoints import AgentIdentity
from connectors.omnidesk.channel.lines.common import (
    agent_caption,
    file_as_text,
    off_the_loop,
    prefixed,
)
from connectors.omnidesk.channel.sides import FileLink, Undeliverable

STATUS_PATH = "/twilio/status"

# What Twilio's error codes mean to an agent (https://www.twilio.com/docs/api/errors).
KNOWN_ERRORS: Mapping[int, str] = {
    63016: "outside WhatsApp's 24-hour window: the customer must write first, or use a template",
    21610: "the customer unsubscribed (replied STOP)",
    21211: "not a valid phone number",
    21614: "not a mobile number",
    30003: "the handset is unreachable",
    30005: "unknown destination handset",
    30006: "landline or unreachable carrier",
    30007: "filtered by the carrier",
    63024: "invalid message recipient",
}


def describe(code: Any, message: Optional[str] = None) -> str:
    """Twilio's error ``code`` as the agent reads it."""
    try:
        known = KNOWN_ERRORS.get(int(code))
    except (TypeError, ValueError):
        known = None
    return f"Twilio error {code}: {known or message or 'see Twilio error ' + str(code)}"


def _async_http_client() -> Any:
    """twilio's async HTTP client (twilio 8 on), or None: then sends go to a worker thread."""
    try:
        from twilio.http.async_http_client import AsyncTwilioHttpClient
    except ImportError:
        return None
    return AsyncTwilioHttpClient(pool_connections=False)


class _Checked(TwilioOutput):  # type: ignore[misc]
    """Rasa's TwilioOutput whose one sending call waits off the loop and raises refusals."""

    def __init__(self, channel: TwilioInput, status_callback: Optional[str]) -> None:
        super().__init__(channel.account_sid, channel.auth_token, channel.twilio_number)
        self._status_callback = status_callback
        client = _async_http_client()
        if client is not None:
            self.http_client = client
        self._is_async = client is not None

    async def _send_message(self, message_data: Dict[str, Any]) -> Any:
        from twilio.base.exceptions import TwilioRestException

        data = dict(message_data)
        if self._status_callback:
            data.setdefault("status_callback", self._status_callback)
        try:
            if self._is_async:
                return await self.messages.create_async(**data)
            return await off_the_loop(self.messages.create, **data)
        except TwilioRestException as error:
            if error.status in (400, 404):
                raise Undeliverable(describe(error.code, error.msg)) from error
            raise


class TwilioLine:
    """twilio: text (``Anna: `` prefix), pictures as media, other files as a link.

    Typing is dropped: Twilio's Messages API shows none.
    """

    held_by_socket = False

    def __init__(
        self, channel: TwilioInput, name_prefix: bool, routes_url: Callable[[], str]
    ) -> None:
        self._channel = channel
        self._name_prefix = name_prefix
        self._routes_url = routes_url

    def _output(self, what: Optional[str]) -> _Checked:
        """An output whose messages report back as ``what`` (None: no status callback)."""
        callback = None
        if what is not None:
            query = urlencode({"channel": str(self._channel.name()), "what": what})
            callback = f"{self._routes_url()}{STATUS_PATH}?{query}"
        return _Checked(self._channel, callback)

    async def send_text(
        self, recipient_id: str, text: str, agent: Optional[AgentIdentity] = None
    ) -> None:
        # An agent's message comes with the agent (even unnamed); a notice comes without,
        # and a notice that fails later is no agent's to hear.
        output = self._output("message" if agent is not None else None)
        await output.send_text_message(recipient_id, prefixed(text, agent, self._name_prefix))

    async def send_file(
        self, recipient_id: str, file: FileLink, agent: Optional[AgentIdentity] = None
    ) -> None:
        output = self._output("file")
        if not file.is_image:
            text = file_as_text(file, agent, self._name_prefix)
            await output.send_text_message(recipient_id, text)
            return
        message: Dict[str, Any] = {"media_url": [file.url]}
        caption = agent_caption(file, agent, self._name_prefix)
        if caption is not None:
            message["body"] = caption
        await output.send_custom_json(recipient_id, message)

    async def send_typing(self, recipient_id: str, typing: bool) -> bool:
        return False

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        await self._output(None).send_response(recipient_id, message)

    async def send_details(self, recipient_id: str, details: Mapping[str, str]) -> bool:
        return False

    def failure_in(self, params: Mapping[str, str]) -> Optional[str]:
        """The agent's reason from a status callback that says undelivered or failed."""
        if params.get("MessageStatus") not in ("undelivered", "failed"):
            return None
        code = params.get("ErrorCode")
        if code:
            return describe(code)
        return f"Twilio reported the message {params.get('MessageStatus')}"

    def signature_ok(self, url: str, params: Mapping[str, str], signature: str) -> bool:
        """Whether ``signature`` (X-Twilio-Signature) is Twilio's for ``url`` and ``params``."""
        from twilio.request_validator import RequestValidator

        token = self._channel.auth_token
        if not token or not signature:
            return False
        return bool(RequestValidator(token).validate(url, dict(params), signature))
