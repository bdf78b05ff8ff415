"""A local Twilio Messages API: ``POST /2010-04-01/Accounts/<sid>/Messages.json``.

The twilio client posts a form (``To``, ``From``, ``Body``, ``MediaUrl`` once per
file, ``StatusCallback``) with HTTP Basic auth ``account_sid:auth_token``; the
fake answers 201 with the message resource (``status: "queued"``), keeps it
(``GET .../Messages/<sid>.json`` reads it back), and answers Twilio's error
objects, which the client raises as TwilioRestException. ``report_status``
then tells the message's StatusCallback what became of it, as Twilio does
later, e.g. ``undelivered`` with 63016 for a WhatsApp reply outside 24 hours.

Point a client at it: ``client.api.base_url = url`` with TWILIO_EDGE and
TWILIO_REGION unset (``redirect.point_twilio_client``). ``inbound_message``
builds Twilio's webhook form for a customer's SMS or WhatsApp message;
``signature`` is X-Twilio-Signature for any of Twilio's requests.
"""

import base64
import hashlib
import hmac
import itertools
import re
from email.utils import formatdate
from typing import Any, Dict, Mapping, Optional, Tuple

import aiohttp

from tests.channel_apis.fake_api import Answer, Call, FakeApi

ACCOUNT_SID = "AC" + "f" * 32
AUTH_TOKEN = "fake-twilio-auth-token-0123456789ab"
SMS_NUMBER = "+15005550006"
WHATSAPP_NUMBER = "whatsapp:+14155238886"


def twilio_error(status: int, code: int, message: str) -> Answer:
    return Answer(
        status,
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
    )


OUTSIDE_WINDOW = twilio_error(
    400,
    63016,
    "Failed to send freeform message because you are outside the allowed window. "
    "If you are using WhatsApp, please use a Message Template.",
)
UNSUBSCRIBED = twilio_error(400, 21610, "Attempt to send to unsubscribed recipient")
TOO_MANY_REQUESTS = twilio_error(429, 20429, "Too Many Requests")
AUTHENTICATE = twilio_error(401, 20003, "Authenticate")


def invalid_to(number: str) -> Answer:
    return twilio_error(400, 21211, f"The 'To' number {number} is not a valid phone number.")


_MESSAGES = re.compile(r"^/2010-04-01/Accounts/(?P<account>AC\w+)/Messages\.json$")
_MESSAGE = re.compile(r"^/2010-04-01/Accounts/(?P<account>AC\w+)/Messages/(?P<sid>\w+)\.json$")


class TwilioApi(FakeApi):
    """The Messages API of one account, ``account_sid`` and ``auth_token``."""

    name = "Twilio Messages API"

    def __init__(self, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.messages: Dict[str, Dict[str, Any]] = {}
        self._status_callbacks: Dict[str, str] = {}
        self._sids = itertools.count(1)

    def identify(self, call: Call) -> Tuple[Optional[str], Optional[str]]:
        if call.method == "POST" and _MESSAGES.match(call.path):
            return "Messages.create", call.form.get("To")
        match = _MESSAGE.match(call.path)
        if call.method == "GET" and match:
            return "Messages.fetch", None
        return None, None

    def authorize(self, call: Call) -> Optional[Answer]:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        match = _MESSAGES.match(call.path) or _MESSAGE.match(call.path)
        account_ok = match is not None and match["account"] == self.account_sid
        if call.headers.get("Authorization") == f"Basic {expected}" and account_ok:
            return None
        return AUTHENTICATE

    def unknown(self, call: Call) -> Answer:
        return twilio_error(404, 20404, f"The requested resource {call.path} was not found")

    def succeed(self, call: Call) -> Answer:
        if call.api_method == "Messages.fetch":
            match = _MESSAGE.match(call.path)
            found = self.messages.get(match["sid"]) if match else None
            return Answer(200, found) if found else self.unknown(call)
        to = call.form.get("To")
        if not to:
            return twilio_error(400, 21604, "A 'To' phone number is required.")
        media = call.form.getall("MediaUrl", [])
        body = call.form.get("Body", "")
        if not body and not media:
            return twilio_error(400, 21602, "Message body is required.")
        sid = f"SM{next(self._sids):032x}"
        message = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": formatdate(usegmt=True),
            "date_sent": None,
            "date_updated": formatdate(usegmt=True),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": call.form.get("From"),
            "messaging_service_sid": call.form.get("MessagingServiceSid"),
            "num_media": str(len(media)),
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {
                "media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}/Media.json"
            },
            "to": to,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        self.messages[sid] = message
        callback = call.form.get("StatusCallback")
        if callback:
            self._status_callbacks[sid] = callback
        return Answer(201, message)

    async def report_status(
        self, message_sid: str, status: str, error_code: Optional[int] = None
    ) -> int:
        """Post the message's status to the StatusCallback it was created with, signed as
        Twilio signs it; returns the HTTP status the callback answered."""
        message = self.messages[message_sid]
        url = self._status_callbacks.get(message_sid)
        if url is None:
            raise AssertionError(f"message {message_sid} was created without a StatusCallback")
        message["status"] = status
        message["error_code"] = error_code
        return await send_status_callback(
            url,
            message_sid=message_sid,
            status=status,
            to=str(message["to"]),
            from_=str(message["from"]),
            error_code=error_code,
            account_sid=self.account_sid,
            auth_token=self.auth_token,
        )


def signature(url: str, params: Mapping[str, str], auth_token: str = AUTH_TOKEN) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1 of the URL and the sorted form, name then value."""
    data = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def status_callback_form(
    message_sid: str,
    status: str,
    to: str,
    from_: str,
    error_code: Optional[int] = None,
    account_sid: str = ACCOUNT_SID,
) -> Dict[str, str]:
    """The form Twilio posts to a message's StatusCallback."""
    form = {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "From": from_,
        "MessageSid": message_sid,
        "MessageStatus": status,
        "SmsSid": message_sid,
        "SmsStatus": status,
        "To": to,
    }
    if to.startswith("whatsapp:"):
        form["ChannelPrefix"] = "whatsapp"
    if error_code is not None:
        form["ErrorCode"] = str(error_code)
    return form


async def send_status_callback(
    url: str,
    message_sid: str,
    status: str,
    to: str,
    from_: str,
    error_code: Optional[int] = None,
    account_sid: str = ACCOUNT_SID,
    auth_token: str = AUTH_TOKEN,
) -> int:
    """Post a status callback to ``url`` with a valid X-Twilio-Signature; returns the status."""
    form = status_callback_form(message_sid, status, to, from_, error_code, account_sid)
    headers = {"X-Twilio-Signature": signature(url, form, auth_token)}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
        url, data=form, headers=headers
    ) as answer:
        await answer.read()
        return answer.status


def inbound_message(
    from_: str,
    body: str,
    to: str = SMS_NUMBER,
    message_sid: str = "SM" + "1" * 32,
    account_sid: str = ACCOUNT_SID,
) -> Dict[str, str]:
    """The form Twilio posts to the number's webhook for a customer's message. For WhatsApp
    give ``whatsapp:+...`` numbers (``to=WHATSAPP_NUMBER``)."""
    form = {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "Body": body,
        "From": from_,
        "MessageSid": message_sid,
        "NumMedia": "0",
        "NumSegments": "1",
        "SmsMessageSid": message_sid,
        "SmsSid": message_sid,
        "SmsStatus": "received",
        "To": to,
    }
    if from_.startswith("whatsapp:"):
        form["WaId"] = from_[len("whatsapp:+") :]
        form["ProfileName"] = "Customer"
    return form
