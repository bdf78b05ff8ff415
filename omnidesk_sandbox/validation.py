"""Turn a raw Omnidesk API form into a typed request, or raise FieldRuleError.

The rules come from connectors.omnidesk.rules, the one table the client checks
before sending. Every function here is pure: it reads a form and returns a
request; the state applies it only when nothing is wrong.
"""

import hmac
import re
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

from connectors.omnidesk import rules
from connectors.omnidesk.rules import FieldRuleError

Form = Mapping[str, str]

# Optional fields of notifyUserNewChatMessage the sandbox keeps without a rule.
EXTRA_MESSAGE_FIELDS = ("additionalData", "externalAddressOverwrite", "usedPredefinedUserInput")

_INTEGER = re.compile(r"^[0-9]+$")
_BRAND_ID = re.compile(r"^[a-zA-Z0-9\-]+$")


@dataclass(frozen=True)
class UploadedFile:
    filename: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class NewChatMessage:
    chat_server: str
    chat_session_id: str
    message: str
    message_number: Optional[int]
    url: Optional[str] = None
    customer_name: Optional[str] = None
    email_address: Optional[str] = None
    phone_number: Optional[str] = None
    extra_fields: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatEventRequest:
    chat_server: str
    chat_session_id: str
    event: str


@dataclass(frozen=True)
class EndChatRequest:
    chat_server: str
    chat_session_id: str


@dataclass(frozen=True)
class AttachmentRequest:
    chat_server: str
    session_id: str
    filename: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class ChatbotLogRequest:
    sender: Optional[str]
    subject: str
    message: str
    brand_id: Optional[str]


def _required(form: Form, name: str) -> str:
    value = form.get(name)
    if value is None:
        raise FieldRuleError(name, "is required")
    return value


def _same_token(name: str, given: str, expected: str) -> None:
    if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise FieldRuleError(name, "does not match this account's token")


def check_account_token(form: Form, expected: str, required: bool = True) -> None:
    """chatAccountToken: Omnidesk's pattern, and equal to the sandbox's token."""
    if not required and "chatAccountToken" not in form:
        return
    token = rules.CHAT_ACCOUNT_TOKEN.check(_required(form, "chatAccountToken"))
    _same_token("chatAccountToken", token, expected)


def _session_id(form: Form, name: str) -> str:
    value = _required(form, name)
    try:
        return rules.CHAT_SESSION_ID.check(value)
    except FieldRuleError as error:
        raise FieldRuleError(name, error.rule) from error


def _optional(form: Form, rule: rules.TextRule) -> Optional[str]:
    value = form.get(rule.field)
    return None if value is None else rule.check(value)


def new_chat_message(form: Form, account_token: str) -> NewChatMessage:
    chat_server = rules.CHAT_SERVER.check(_required(form, "chatServer"))
    chat_session_id = rules.CHAT_SESSION_ID.check(_required(form, "chatSessionID"))
    check_account_token(form, account_token)
    channel = form.get("channelID")
    if channel is not None and channel.strip() != str(rules.CHANNEL_ID_LIVE_CHAT):
        raise FieldRuleError(
            "channelID", f"must be {rules.CHANNEL_ID_LIVE_CHAT} (live chat), got {channel!r}"
        )
    message = rules.MESSAGE.check(_required(form, "message"))
    number: Optional[int] = None
    raw_number = form.get("messageNumber")
    if raw_number is not None:
        if not _INTEGER.fullmatch(raw_number.strip()):
            raise FieldRuleError("messageNumber", f"must be an integer, got {raw_number!r}")
        number = rules.check_message_number(int(raw_number.strip()))
    return NewChatMessage(
        chat_server=chat_server,
        chat_session_id=chat_session_id,
        message=message,
        message_number=number,
        url=form.get("url"),
        customer_name=_optional(form, rules.CUSTOMER_NAME),
        email_address=_optional(form, rules.EMAIL_ADDRESS),
        phone_number=_optional(form, rules.PHONE_NUMBER),
        extra_fields={k: form[k] for k in EXTRA_MESSAGE_FIELDS if k in form},
    )


def chat_event(form: Form, account_token: str) -> ChatEventRequest:
    chat_server = rules.CHAT_SERVER.check(_required(form, "chatServer"))
    chat_session_id = rules.CHAT_SESSION_ID.check(_required(form, "chatSessionID"))
    check_account_token(form, account_token, required=False)
    event = rules.check_event(_required(form, "event"))
    return ChatEventRequest(chat_server, chat_session_id, event)


def end_chat(form: Form, account_token: str) -> EndChatRequest:
    chat_server = rules.CHAT_SERVER.check(_required(form, "chatServer"))
    chat_session_id = rules.CHAT_SESSION_ID.check(_required(form, "chatSessionID"))
    check_account_token(form, account_token, required=False)
    return EndChatRequest(chat_server, chat_session_id)


def attachment(
    form: Form, files: Mapping[str, UploadedFile], account_token: str, max_bytes: int
) -> AttachmentRequest:
    chat_server = rules.CHAT_SERVER.check(_required(form, "chatServer"))
    check_account_token(form, account_token)
    session_id = _session_id(form, "sessionID")
    upload = files.get("file")
    if upload is None:
        if "file" in form:
            raise FieldRuleError("file", "must be a file part (multipart/form-data), not text")
        raise FieldRuleError("file", "is required (a file part of a multipart/form-data body)")
    if not upload.data:
        raise FieldRuleError("file", "must not be empty")
    if len(upload.data) > max_bytes:
        raise FieldRuleError("file", f"must be at most {max_bytes} bytes, got {len(upload.data)}")
    if not upload.filename:
        raise FieldRuleError("file", "must have a filename")
    return AttachmentRequest(
        chat_server, session_id, upload.filename, upload.content_type, upload.data
    )


def _matches(rule: rules.TextRule, value: str) -> bool:
    try:
        rule.check(value)
    except FieldRuleError:
        return False
    return True


def chatbot_log(form: Form) -> ChatbotLogRequest:
    sender = form.get("from")
    if sender is not None and not (
        _matches(rules.EMAIL_ADDRESS, sender) or _matches(rules.PHONE_NUMBER, sender)
    ):
        raise FieldRuleError(
            "from", "must be an email address or '+' followed by digits, such as +31201234567"
        )
    subject = _required(form, "subject")
    if not subject.strip():
        raise FieldRuleError("subject", "must not be empty")
    message = rules.MESSAGE.check(_required(form, "message"))
    if not message.strip():
        raise FieldRuleError("message", "must not be blank")
    brand_id = form.get("brandID")
    if brand_id is not None and not _BRAND_ID.fullmatch(brand_id):
        raise FieldRuleError("brandID", "must be letters, digits and '-', such as 12")
    return ChatbotLogRequest(sender, subject, message, brand_id)


def chat_config_tokens(form: Form, account_token: str, server_token: str) -> None:
    """GET requestChatConfig: both tokens present and equal to the sandbox's."""
    check_account_token(form, account_token)
    given = _required(form, "chatServerToken")
    if not given:
        raise FieldRuleError("chatServerToken", "must not be empty")
    if not hmac.compare_digest(given.encode("utf-8"), server_token.encode("utf-8")):
        raise FieldRuleError("chatServerToken", "does not match this chat server's token")


def chat_config_post(form: Form, account_token: str) -> None:
    """POST /api/v2/chat/requestChatConfig: chatServer and chatAccountToken."""
    rules.CHAT_SERVER.check(_required(form, "chatServer"))
    check_account_token(form, account_token)
