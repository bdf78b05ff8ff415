"""Omnidesk's field rules, as its API specification states them, and ours beside them.

One table serves both sides of the wire: the client checks what it is about to
send, the sandbox rejects what the real Omnidesk would reject. The patterns are
copied from Omnidesk's published specification (see docs/omnidesk-api.md); the
tests pin each of them with literal good and bad values.

The rules we add to Omnidesk's live here too, each once: the client's url,
subject and brandID, MIME types, the true/false words, file names and the
upload check. Every rule breaks with one error, ``FieldRuleError``: the field,
the rule, and the HTTP status that fits the refusal.
"""

import dataclasses
import re
import unicodedata
from dataclasses import dataclass
from typing import Collection, FrozenSet, Optional, Pattern

CHANNEL_ID_LIVE_CHAT = 8
MESSAGE_NUMBER_MAX = 50

CHAT_EVENTS: FrozenSet[str] = frozenset(
    {"startedtyping", "stoppedtyping", "expandedchat", "minimizedchat"}
)


class FieldRuleError(ValueError):
    """A value breaks a field rule. Says which field, which rule, and the status that fits.

    ``status`` is what an edge answers for it: 400 by default, 413 for too
    large, 415 for a type not accepted. The channel's ``HookpointInputError``
    and the client's ``OmnideskValidationError`` are this error too, each
    placed in its own module's hierarchy.
    """

    def __init__(self, field: str, rule: str, status: int = 400) -> None:
        self.field = field
        self.rule = rule
        self.status = status
        super().__init__(f"{field}: {rule}")


# -- the contract's names -------------------------------------------------------------

# The Omnidesk calls, as Omnidesk's paths spell them; they appear in errors, logs and
# the metrics' labels.
NEW_CHAT_MESSAGE = "notifyUserNewChatMessage"
ADD_ATTACHMENT = "addAttachment"
NEW_CHAT_EVENT = "notifyUserNewChatEvent"
END_CHAT = "notifyUserEndChat"
CHATBOT_LOG = "chatbot"
REQUEST_CHAT_CONFIG = "requestChatConfig"
API_CALL_NAMES = (
    NEW_CHAT_MESSAGE,
    ADD_ATTACHMENT,
    NEW_CHAT_EVENT,
    END_CHAT,
    CHATBOT_LOG,
    REQUEST_CHAT_CONFIG,
)
# The hookpoints Omnidesk calls on the connector (the last segment of their paths).
HOOKPOINT_NAMES = (
    "messageForCustomer",
    "uploadForCustomer",
    "typingIndicatorForCustomer",
    "endSession",
)


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

# addAttachment and the hookpoints name the session field sessionID; the rule is chatSessionID's.
SESSION_ID = dataclasses.replace(CHAT_SESSION_ID, field="sessionID")


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


# --- rules we add to Omnidesk's ------------------------------------------------
# Omnidesk's specification leaves these fields open; we refuse what would
# garble a form field or a log line.

_ONE_LINE = re.compile(r"^[^\x00-\x1f\x7f]+$")
URL = TextRule(
    "url", min_length=1, max_length=2048, pattern=re.compile(r"^\S+$"), described="no spaces"
)
SUBJECT = TextRule("subject", min_length=1, pattern=_ONE_LINE, described="text on one line")
BRAND_ID = TextRule("brandID", min_length=1, pattern=_ONE_LINE, described="text on one line")


def check_from_address(value: object) -> str:
    """The chatbot log's ``from``: an email address or a phone number."""
    for rule in (EMAIL_ADDRESS, PHONE_NUMBER):
        try:
            return rule.check(value)
        except FieldRuleError:
            continue
    raise FieldRuleError(
        "from",
        "must be an email address such as jane@example.com or a phone number such as +31201234567",
    )


# What Omnidesk posts to the hookpoints has no documented bounds; these are ours.
# A longer agent message is refused (413); a longer name is cut; a longer
# picture URL is dropped (the picture is decoration, the message still goes).
AGENT_MESSAGE_MAX_CHARS = 20_000
AGENT_NAME_MAX_CHARS = 200
AGENT_PICTURE_MAX_CHARS = 2_000


# --- true/false words -----------------------------------------------------------

# YAML 1.1 reads true/false, yes/no and on/off as booleans, so credentials.yml
# already accepts all of them; the same words are accepted wherever a boolean
# arrives as text (an environment variable, a hookpoint's Typing), in any case.
TRUE_WORDS: FrozenSet[str] = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS: FrozenSet[str] = frozenset({"false", "0", "no", "off"})
BOOLEAN_RULE = "must be true or false (also 1/0, yes/no, on/off)"


def parse_bool(field: str, value: object) -> bool:
    """A boolean from a bool, the integers 0 and 1, or one of the true/false words.

    The rule does not show the value: a caller that may show it adds it.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise FieldRuleError(field, BOOLEAN_RULE)


# --- files ------------------------------------------------------------------------

# A MIME type as allowed_upload_types lists it: type/subtype, or type/* there.
MIME_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/(\*|[a-z0-9][a-z0-9!#$&^_.+-]*)$")

FILENAME_MAX_CHARS = 200
_NOT_FILENAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str) -> str:
    """A file name of letters, digits, '.', '_' and '-' only, at most 200 characters.

    One rule for both directions. Sent to Omnidesk as a multipart filename,
    any other character would be percent-quoted by aiohttp ("a b.png" arrives
    as "a%20b.png"); in an agent file's URL and its Content-Disposition these
    characters need no quoting either. Accents are folded ("café" becomes
    "cafe") rather than lost, directories are dropped, and a name cut to length
    keeps its extension, so the file still opens with the right program. 200
    characters stays well inside the 255 bytes file systems allow a name.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    folded = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    cleaned = _NOT_FILENAME_CHARACTERS.sub("_", folded).strip("._")
    if not cleaned:
        return "file"
    if len(cleaned) > FILENAME_MAX_CHARS:
        _stem, dot, extension = cleaned.rpartition(".")
        keep = extension if dot and len(extension) <= 16 else ""
        cut = FILENAME_MAX_CHARS - len(keep) - 1
        cleaned = cleaned[:cut] + "." + keep if keep else cleaned[:FILENAME_MAX_CHARS]
    return cleaned


def mime_type_of(content_type: str) -> str:
    """The bare MIME type of a Content-Type, parameters dropped, lower case.

    ``text/plain; charset=utf-8`` is ``text/plain``: the rules match the type,
    never its parameters.
    """
    return content_type.split(";", 1)[0].strip().lower()


def check_upload_size(content_length: int, max_bytes: int) -> None:
    """A file of ``content_length`` bytes fits ``max_bytes``, or 413."""
    if content_length > max_bytes:
        raise FieldRuleError(
            "file", f"must be at most {max_bytes} bytes, got {content_length}", status=413
        )


def check_upload_type(content_type: str, allowed_types: Optional[Collection[str]] = None) -> str:
    """The bare MIME type of a file, if it is one we take, or 415.

    A concrete type (``image/png``, not ``image/*``) is required; parameters
    are ignored. With ``allowed_types`` (MIME types, ``type/*`` allowed, as
    ``allowed_upload_types`` holds them) the type must also be one of them.
    """
    mime = mime_type_of(content_type) if isinstance(content_type, str) else ""
    if not MIME_TYPE.fullmatch(mime) or mime.endswith("/*"):
        shown = content_type[:80] if isinstance(content_type, str) else content_type
        raise FieldRuleError(
            "file",
            f"content type must be a MIME type such as image/png, got {shown!r}",
            status=415,
        )
    if allowed_types is not None:
        major = mime.split("/", 1)[0]
        if mime not in allowed_types and f"{major}/*" not in allowed_types:
            raise FieldRuleError(
                "file",
                f"type {mime} not allowed; allowed: {', '.join(allowed_types)}",
                status=415,
            )
    return mime


def check_upload(
    content_length: int,
    content_type: str,
    max_bytes: int,
    allowed_types: Optional[Collection[str]] = None,
) -> str:
    """The one upload check: size (413), then type (415). Returns the bare MIME type.

    Every place a file enters or leaves checks it here, so a file the channel
    takes from a customer is one the client sends on.
    """
    check_upload_size(content_length, max_bytes)
    return check_upload_type(content_type, allowed_types)
