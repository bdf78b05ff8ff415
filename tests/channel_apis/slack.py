"""A local Slack Web API: ``POST /api/<method>``, as slack_sdk calls it.

Answers chat.postMessage (``{"ok": true, "channel", "ts", "message"}``),
auth.test, and the three steps of a file upload (files.getUploadURLExternal, the
upload itself to the URL it hands out, files.completeUploadExternal). The token
comes as ``Authorization: Bearer``; a wrong one gets ``invalid_auth``, a missing
one ``not_authed``, an unknown method ``unknown_method``. Like Slack, refusals
other than rate limits come with HTTP 200 and ``"ok": false``: slack_sdk raises
SlackApiError for them.

Point a client at it: ``client.base_url = f"{url}/api/"``
(``redirect.point_slack_client``). ``dm_event``, ``mention_event`` and ``signed``
build Events API requests for Rasa's webhook, v0-signed.
"""

import hashlib
import hmac
import itertools
import json
import re
import time
from typing import Any, Dict, Mapping, Optional, Tuple

from tests.channel_apis.fake_api import Answer, Call, FakeApi

BOT_TOKEN = "xoxb-0000000000-fake-local-slack-token"
SIGNING_SECRET = "fake-slack-signing-secret-0123456789"
TEAM_ID = "T0FAKETEAM"
BOT_USER_ID = "U0FAKEBOT"
BOT_ID = "B0FAKEBOT"
APP_ID = "A0FAKEAPP"


def slack_error(error: str) -> Answer:
    """A Slack refusal: HTTP 200 with ``"ok": false``."""
    return Answer(200, {"ok": False, "error": error})


CHANNEL_NOT_FOUND = slack_error("channel_not_found")
NOT_IN_CHANNEL = slack_error("not_in_channel")
IS_ARCHIVED = slack_error("is_archived")
INVALID_AUTH = slack_error("invalid_auth")
NOT_AUTHED = slack_error("not_authed")
UNKNOWN_METHOD = slack_error("unknown_method")
NO_TEXT = slack_error("no_text")


def ratelimited(retry_after: int = 1) -> Answer:
    """Slack's rate limit: HTTP 429, the seconds to wait in Retry-After."""
    return Answer(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry_after)})


# A conversation id (C..., D..., G...), a user id (U..., W...: the app's DM with them) or
# a #channel name: anything else is a channel Slack does not find.
_CHANNEL = re.compile(r"^([CDGUW][A-Z0-9]{2,}|#[a-z0-9_-]+)$")


class SlackApi(FakeApi):
    """The Web API of one workspace, reached with ``token``."""

    name = "Slack Web API"

    def __init__(self, token: str = BOT_TOKEN) -> None:
        super().__init__()
        self.token = token
        self._ts = itertools.count(1)
        self._file_ids = itertools.count(1)

    def identify(self, call: Call) -> Tuple[Optional[str], Optional[str]]:
        if call.method != "POST":
            return None, None
        if call.path.startswith("/upload/"):
            return "upload", None
        if not call.path.startswith("/api/"):
            return None, None
        method = call.path[len("/api/") :]
        recipient = call.param("channel") or call.param("channel_id")
        return method, None if recipient is None else str(recipient)

    def authorize(self, call: Call) -> Optional[Answer]:
        if call.api_method == "upload":
            return None
        header = call.headers.get("Authorization", "")
        token = header[len("Bearer ") :] if header.startswith("Bearer ") else call.param("token")
        if not token:
            return NOT_AUTHED
        return None if token == self.token else INVALID_AUTH

    def unknown(self, call: Call) -> Answer:
        return Answer(404, "Not Found")

    def succeed(self, call: Call) -> Answer:
        method = call.api_method
        if method == "chat.postMessage":
            if not _CHANNEL.match(call.recipient or ""):
                return CHANNEL_NOT_FOUND
            if not any(call.param(name) for name in ("text", "blocks", "attachments")):
                return NO_TEXT
            return _ok(channel=call.recipient, ts=self._next_ts(), message=self._message(call))
        if method == "auth.test":
            return _ok(
                url="https://omnidesk-test.slack.com/",
                team="Omnidesk Test",
                user="rasa",
                team_id=TEAM_ID,
                user_id=BOT_USER_ID,
                bot_id=BOT_ID,
            )
        if method == "files.getUploadURLExternal":
            file_id = f"F0FAKE{next(self._file_ids):04d}"
            return _ok(upload_url=f"{self.url}/upload/{file_id}", file_id=file_id)
        if method == "upload":
            return Answer(200, f"OK - {len(call.body)}")
        if method == "files.completeUploadExternal":
            files = call.param("files")
            listed = json.loads(files) if isinstance(files, str) else files or []
            return _ok(files=[{"id": f.get("id"), "title": f.get("title")} for f in listed])
        return UNKNOWN_METHOD

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def _message(self, call: Call) -> Dict[str, Any]:
        message = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID}
        for name in ("text", "thread_ts"):
            value = call.param(name)
            if value is not None:
                message[name] = value
        return message


def _ok(**fields: Any) -> Answer:
    return Answer(200, {"ok": True, **fields})


def _envelope(event: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "token": "unused-verification-token",
        "team_id": TEAM_ID,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": f"Ev{event['ts'].replace('.', '')}",
        "event_time": int(float(event["ts"])),
        "authorizations": [
            {
                "team_id": TEAM_ID,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
    }


def dm_event(
    user: str, text: str, channel: str = "D0FAKEDM1", ts: Optional[str] = None
) -> Dict[str, Any]:
    """The Events API request for ``user`` writing ``text`` in their DM with the bot."""
    ts = ts or f"{time.time():.6f}"
    event = {
        "type": "message",
        "channel_type": "im",
        "channel": channel,
        "user": user,
        "text": text,
        "ts": ts,
        "event_ts": ts,
    }
    return _envelope(event)


def mention_event(
    user: str, text: str, channel: str, thread_ts: Optional[str] = None, ts: Optional[str] = None
) -> Dict[str, Any]:
    """The Events API request for ``user`` mentioning the bot in ``channel``, in a thread when
    ``thread_ts`` is given (Rasa answers mentions in any channel)."""
    ts = ts or f"{time.time():.6f}"
    event = {
        "type": "app_mention",
        "channel": channel,
        "user": user,
        "text": f"<@{BOT_USER_ID}> {text}",
        "ts": ts,
        "event_ts": ts,
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return _envelope(event)


def signed(
    event: Mapping[str, Any], signing_secret: str = SIGNING_SECRET, timestamp: Optional[int] = None
) -> Tuple[bytes, Dict[str, str]]:
    """The body and headers of Slack's POST of ``event``, with a v0 signature."""
    body = json.dumps(event).encode("utf-8")
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    base = b"v0:" + stamp.encode("ascii") + b":" + body
    digest = hmac.new(signing_secret.encode("utf-8"), base, hashlib.sha256).hexdigest()
    return body, {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": f"v0={digest}",
    }
