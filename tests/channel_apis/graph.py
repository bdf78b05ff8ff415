"""A local Messenger Send API: ``POST /v<version>/me/messages``, as fbmessenger posts it.

fbmessenger sends JSON (``messaging_type``, ``recipient``, ``message`` or
``sender_action``, and ``tag`` when given) with the page token as the
``access_token`` query parameter. A wrong token gets Graph's code 190; a message
answers ``{"recipient_id", "message_id"}``, a sender action ``{"recipient_id"}``.
The refusals below are Graph's error objects. fbmessenger returns the answer's
JSON whatever the status, and never raises.

Point a client at it: ``client.graph_url = f"{url}/v{client.api_version}"``
(``redirect.point_messenger_client``). ``message_event`` and ``signed`` build
what Facebook posts to Rasa's webhook, with X-Hub-Signature (sha1, what Rasa
checks) and X-Hub-Signature-256.
"""

import hashlib
import hmac
import itertools
import json
import re
import time
from typing import Any, Dict, Mapping, Optional, Tuple

from tests.channel_apis.fake_api import Answer, Call, FakeApi

PAGE_ACCESS_TOKEN = "EAAFakePageAccessTokenForTheLocalGraphApi"
APP_SECRET = "fake-app-secret-0123456789abcdef"
PAGE_ID = "109876543210987"
FBTRACE_ID = "AxFakeTrace01"


def graph_error(
    status: int, code: int, message: str, subcode: Optional[int] = None, **extra: Any
) -> Answer:
    error: Dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error.update(extra)
    error["fbtrace_id"] = FBTRACE_ID
    return Answer(status, {"error": error})


# The customer's last message is more than 24 h old and the reply has no fitting tag.
OUTSIDE_WINDOW = graph_error(
    400, 10, "(#10) This message is sent outside of allowed window.", 2018278
)
# The person blocked the page, or cannot be reached on Messenger any more.
USER_UNAVAILABLE = graph_error(400, 551, "(#551) This person isn't available right now.", 1545041)
NO_MATCHING_USER = graph_error(400, 100, "(#100) No matching user found", 2018001)
INVALID_TOKEN = graph_error(400, 190, "Invalid OAuth access token - Cannot parse access token")
RATE_LIMITED = graph_error(400, 613, "(#613) Calls to this api have exceeded the rate limit.")
TEMPORARY = graph_error(
    500, 2, "An unexpected error has occurred. Please retry your request later.", is_transient=True
)

_PATH = re.compile(r"^/v(?P<version>[0-9.]+)/me/messages$")


class GraphApi(FakeApi):
    """The Send API of one page, reached with ``page_access_token``."""

    name = "Graph Send API"

    def __init__(self, page_access_token: str = PAGE_ACCESS_TOKEN) -> None:
        super().__init__()
        self.page_access_token = page_access_token
        self._message_ids = itertools.count(1)

    def identify(self, call: Call) -> Tuple[Optional[str], Optional[str]]:
        if call.method != "POST" or not _PATH.match(call.path):
            return None, None
        body = call.json if isinstance(call.json, dict) else {}
        recipient = body.get("recipient") or {}
        kind = "sender_action" if "sender_action" in body else "message"
        return kind, recipient.get("id")

    def authorize(self, call: Call) -> Optional[Answer]:
        return None if call.query.get("access_token") == self.page_access_token else INVALID_TOKEN

    def unknown(self, call: Call) -> Answer:
        return graph_error(400, 2500, f"Unknown path components: {call.path}")

    def succeed(self, call: Call) -> Answer:
        if call.recipient is None:
            return graph_error(400, 100, "(#100) The parameter recipient is required")
        if call.api_method == "sender_action":
            return Answer(200, {"recipient_id": call.recipient})
        message_id = f"m_fake{next(self._message_ids):06d}"
        return Answer(200, {"recipient_id": call.recipient, "message_id": message_id})


def message_event(
    psid: str, text: str, page_id: str = PAGE_ID, mid: str = "m_in1"
) -> Dict[str, Any]:
    """What Facebook posts to the page's webhook when the person ``psid`` writes ``text``."""
    now = int(time.time() * 1000)
    messaging = {
        "sender": {"id": psid},
        "recipient": {"id": page_id},
        "timestamp": now,
        "message": {"mid": mid, "text": text},
    }
    return {"object": "page", "entry": [{"id": page_id, "time": now, "messaging": [messaging]}]}


def signed(event: Mapping[str, Any], app_secret: str = APP_SECRET) -> Tuple[bytes, Dict[str, str]]:
    """The body and headers of Facebook's webhook POST of ``event``, signed with the app secret."""
    body = json.dumps(event).encode("utf-8")
    sha1 = hmac.new(app_secret.encode("utf-8"), body, hashlib.sha1).hexdigest()
    sha256 = hmac.new(app_secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return body, {
        "Content-Type": "application/json",
        "X-Hub-Signature": f"sha1={sha1}",
        "X-Hub-Signature-256": f"sha256={sha256}",
    }
