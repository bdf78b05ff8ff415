"""A local Telegram Bot API: ``/bot<token>/<method>``, as aiogram 2 and 3 call it.

Answers getMe, setWebhook, deleteWebhook, getWebhookInfo, sendChatAction and every
``send*`` method (a Message), each in Telegram's ``{"ok": true, "result": ...}``
envelope; a wrong token gets 401 and an unknown method 404, as from Telegram.
The refusals below are Telegram's own bodies; aiogram maps them to its
exceptions by status and description.

Point a client at it: aiogram 2 ``bot.server = TelegramAPIServer.from_base(url)``,
aiogram 3 ``bot.session.api = TelegramAPIServer.from_base(url)``; see
``redirect.py`` for both, and for every bot a process makes.
"""

import itertools
import re
import time
from typing import Any, Dict, Optional, Tuple

from tests.channel_apis.fake_api import Answer, Call, FakeApi, Upload

TOKEN = "123456789:AAFakeTokenForTheLocalTelegramBotApi0"
BOT_USERNAME = "omnidesk_test_bot"


def _refusal(status: int, description: str, **parameters: int) -> Answer:
    body: Dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return Answer(status, body)


BOT_BLOCKED = _refusal(403, "Forbidden: bot was blocked by the user")
USER_DEACTIVATED = _refusal(403, "Forbidden: user is deactivated")
CHAT_NOT_FOUND = _refusal(400, "Bad Request: chat not found")
MESSAGE_TOO_LONG = _refusal(400, "Bad Request: message is too long")
UNAUTHORIZED = _refusal(401, "Unauthorized")
NOT_FOUND = _refusal(404, "Not Found")
SERVER_ERROR = _refusal(500, "Internal Server Error")


def too_many_requests(retry_after: int = 3) -> Answer:
    """Telegram's flood control: 429, and how many seconds to wait in parameters.retry_after."""
    return _refusal(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)


_PATH = re.compile(r"^/bot(?P<token>[^/]+)/(?P<method>[A-Za-z]+)$")
_TRUE_METHODS = {"setwebhook", "deletewebhook", "sendchataction", "close", "logout"}


class TelegramApi(FakeApi):
    """The Bot API of one bot, ``token``, whose getMe says ``username``."""

    name = "Telegram Bot API"

    def __init__(self, token: str = TOKEN, username: str = BOT_USERNAME) -> None:
        super().__init__()
        self.token = token
        self.username = username
        self.bot_id = int(token.split(":", 1)[0])
        self.webhook_url = ""
        self._message_ids = itertools.count(1)

    def identify(self, call: Call) -> Tuple[Optional[str], Optional[str]]:
        match = _PATH.match(call.path)
        if match is None or call.method not in ("GET", "POST"):
            return None, None
        chat_id = call.param("chat_id")
        return match["method"], None if chat_id is None else str(chat_id)

    def authorize(self, call: Call) -> Optional[Answer]:
        match = _PATH.match(call.path)
        return None if match is not None and match["token"] == self.token else UNAUTHORIZED

    def unknown(self, call: Call) -> Answer:
        return NOT_FOUND

    def succeed(self, call: Call) -> Answer:
        method = (call.api_method or "").lower()
        if method == "getme":
            return _ok(self.bot_user())
        if method == "setwebhook":
            self.webhook_url = str(call.param("url") or "")
        if method == "deletewebhook":
            self.webhook_url = ""
        if method == "getwebhookinfo":
            info = {"url": self.webhook_url, "has_custom_certificate": False}
            return _ok({**info, "pending_update_count": 0})
        if method in _TRUE_METHODS:
            return _ok(True)
        if method.startswith("send") and call.recipient is None:
            return _refusal(400, "Bad Request: chat_id is empty")
        if method == "sendmessage" and not call.param("text"):
            return _refusal(400, "Bad Request: message text is empty")
        if method.startswith("send"):
            return _ok(self._message(call))
        return NOT_FOUND

    def bot_user(self) -> Dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "Omnidesk Test",
            "username": self.username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _message(self, call: Call) -> Dict[str, Any]:
        chat_id = str(call.param("chat_id") or "0")
        message: Dict[str, Any] = {
            "message_id": next(self._message_ids),
            "from": self.bot_user(),
            "chat": {"id": _numeric(chat_id), "type": "private", "first_name": "Customer"},
            "date": int(time.time()),
        }
        text = call.param("text")
        if text is not None:
            message["text"] = text
        caption = call.param("caption")
        if caption is not None:
            message["caption"] = caption
        file_id = f"file-{message['message_id']}"
        if call.api_method == "sendPhoto":
            size = {"file_id": file_id, "file_unique_id": file_id, "width": 90, "height": 90}
            message["photo"] = [size]
        if call.api_method == "sendDocument":
            upload = uploaded(call, "document")
            name = upload.filename if upload is not None else "document"
            message["document"] = {"file_id": file_id, "file_unique_id": file_id, "file_name": name}
        return message


def uploaded(call: Call, name: str) -> Optional[Upload]:
    """The file sent as parameter ``name``: aiogram 2 sends it as that part, aiogram 3 as
    ``attach://<part>``. None when the parameter is a URL or file_id."""
    value = call.param(name)
    if isinstance(value, str) and value.startswith("attach://"):
        return call.files.get(value[len("attach://") :])
    return call.files.get(name)


def update(
    chat_id: int, text: str, update_id: int = 1, first_name: str = "Customer"
) -> Dict[str, Any]:
    """The Update Telegram posts to the bot's webhook for a customer's text in a private chat."""
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": chat_id, "is_bot": False, "first_name": first_name},
            "chat": {"id": chat_id, "type": "private", "first_name": first_name},
            "date": int(time.time()),
            "text": text,
        },
    }


def _ok(result: Any) -> Answer:
    return Answer(200, {"ok": True, "result": result})


def _numeric(chat_id: str) -> int:
    return int(chat_id) if chat_id.lstrip("-").isdigit() else 0
