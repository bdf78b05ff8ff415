"""Omnidesk's field rules, as its API specification states them.

One table serves both sides of the wire: the client checks what it is about to
send, the sandbox rejects what the real Omnidesk would reject. The patterns are
copied from Omnidesk's published specification (see docs/omnidesk-api.md); the
tests pin each of them with literal good and bad values.

Nothing here imports rasa, rasa_sdk, sanic or aiohttp.
"""

import dataclasses
import re
import unicodedata
from dataclasses import dataclass
from typing import FrozenSet, Optional, Pattern

CHANNEL_ID_LIVE_CHAT = 8
MESSAGE_NUMBER_MAX = 50

CHAT_EVENTS: FrozenSet[str] = frozenset(
    {"startedtyping", "stoppedtyping", "expandedchat", "minimizedchat"}
)


class FieldRuleError(ValueError):
    """A value breaks one of Omnidesk's field rules. Says which field and which rule."""

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


@dataclass(frozen=True)
class TextRule:
    """A rule for a text field: its length bounds and the characters it may hold."""

    field: str
    min_length: int = 0
    max_length: Optional[int] = None
    pattern: Optional[Pattern[str]] = None
    described: str = ""

    def check(self, value: object) -> str:
        if not isinstance(value, str):
            raise FieldRuleError(self.field, f"must be text, got {type(value).__name__}")
        if len(value) < self.min_length:
            raise FieldRuleError(
                self.field, f"must be at least {self.min_length} characters, got {len(value)}"
            )
        if self.max_length is not None and len(value) > self.max_length:
            raise FieldRuleError(
                self.field, f"must be at most {self.max_length} characters, got {len(value)}"
            )
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise FieldRuleError(
                self.field, f"may only contain {self.described} (pattern {self.pattern.pattern})"
            )
        return value


CHAT_SERVER = TextRule(
    "chatServer",
    min_length=5,
    pattern=re.compile(r"^[a-zA-Z0-9\.\:\/\-]+$"),
    described="letters, digits, '.', ':', '/' and '-'",
)
CHAT_SESSION_ID = TextRule(
    "chatSessionID",
    min_length=10,
    max_length=65,
    pattern=re.compile(r"^\+?[a-zA-Z0-9\-]+$"),
    described="letters, digits and '-', with an optional leading '+'",
)
CHAT_ACCOUNT_TOKEN = TextRule(
    "chatAccountToken",
    min_length=10,
    pattern=re.compile(r"^[a-zA-Z0-9]+$"),
    described="letters and digits",
)
# requestChatConfig's chatServerToken follows the account token's rule.
CHAT_SERVER_TOKEN = dataclasses.replace(CHAT_ACCOUNT_TOKEN, field="chatServerToken")
MESSAGE = TextRule("message", min_length=1)
CUSTOMER_NAME = TextRule(
    "customerName",
    min_length=1,
    pattern=re.compile(r"^[a-zA-Z 0-9]+$"),
    described="letters, digits and spaces",
)
EMAIL_ADDRESS = TextRule(
    "emailAddress",
    min_length=3,
    max_length=254,
    pattern=re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
    described="an email address such as jane@example.com",
)
PHONE_NUMBER = TextRule(
    "phoneNumber",
    min_length=2,
    pattern=re.compile(r"^\+[0-9]+$"),
    described="'+' followed by digits, such as +31201234567",
)
# The hookpoint secret lives inside chatServer as a path segment, so it may only
# use what chatServer allows in a segment.
HOOKPOINT_SECRET = TextRule(
    "hookpoint_secret",
    min_length=24,
    max_length=128,
    pattern=re.compile(r"^[a-zA-Z0-9\-]+$"),
    described="letters, digits and '-'",
)


def check_message_number(value: object) -> int:
    """messageNumber: an integer from 1 to 50 (Omnidesk's documented cap)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldRuleError("messageNumber", f"must be an integer, got {value!r}")
    if not 1 <= value <= MESSAGE_NUMBER_MAX:
        raise FieldRuleError(
            "messageNumber", f"must be between 1 and {MESSAGE_NUMBER_MAX}, got {value}"
        )
    return value


def check_event(value: object) -> str:
    """event of notifyUserNewChatEvent: one of the four names Omnidesk knows."""
    if not isinstance(value, str) or value not in CHAT_EVENTS:
        raise FieldRuleError(
            "event", f"must be one of {'|'.join(sorted(CHAT_EVENTS))}, got {value!r}"
        )
    return str(value)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(value: str) -> str:
    """``value`` with every lone surrogate replaced by U+FFFD.

    JSON allows ``"\\ud800"``, and Python decodes it into a str that cannot be
    encoded as UTF-8: carried into a tracker, a transcript or a multipart body
    it fails far from where it came in. Text is repaired where it enters.
    """
    return _LONE_SURROGATE.sub("\ufffd", value) if _LONE_SURROGATE.search(value) else value


_NOT_NAME_CHARACTERS = re.compile(r"[^a-zA-Z 0-9]+")


def clean_customer_name(value: Optional[str]) -> Optional[str]:
    """Make a display name fit customerName's pattern, or drop it.

    Accents are folded ("José" becomes "Jose"), other characters removed and
    runs of spaces collapsed. A name with nothing left is dropped (None):
    the field is optional, and a wrong name is worse than none.
    """
    if not value:
        return None
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    cleaned = " ".join(_NOT_NAME_CHARACTERS.sub(" ", folded).split())
    return cleaned or None
