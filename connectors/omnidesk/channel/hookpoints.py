"""What Omnidesk posts to the hookpoints, read and checked at the edge.

Omnidesk's documentation spells the same field differently per hookpoint
(sessionID, SessionID, Typing) and says nothing of the encoding, so fields are
read case-insensitively from a multipart or urlencoded form, a JSON object or
the query string. Each hookpoint's input becomes one typed value; anything
missing or malformed raises ``HookpointInputError`` naming the field.
"""

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional
from urllib.parse import parse_qsl, urlsplit

from connectors.omnidesk import rules
from connectors.omnidesk.rules import valid_text

logger = logging.getLogger(__name__)

# Hookpoint bodies are flat objects; anything nested deeper is refused before
# json.loads could recurse into a RecursionError.
JSON_MAX_DEPTH = 32


class HookpointInputError(rules.FieldRuleError):
    """A hookpoint call is missing a field or carries a malformed one.

    ``rules.FieldRuleError`` in the channel's own name: ``field``, ``rule`` and
    the ``status`` the route answers.
    """


@dataclass(frozen=True)
class UploadedFile:
    filename: str
    content: bytes
    content_type: str


@dataclass(frozen=True)
class HookpointFields:
    """A hookpoint call's fields, keys lower-cased; the first value of each wins."""

    values: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, UploadedFile] = field(default_factory=dict)

    def text(self, name: str) -> Optional[str]:
        return self.values.get(name.lower())


@dataclass(frozen=True)
class AgentIdentity:
    name: Optional[str] = None
    picture: Optional[str] = None


@dataclass(frozen=True)
class AgentMessage:
    session_id: str
    message: str
    agent: AgentIdentity


@dataclass(frozen=True)
class AgentUpload:
    session_id: str
    file: UploadedFile
    agent: AgentIdentity


@dataclass(frozen=True)
class AgentTyping:
    session_id: str
    typing: bool


@dataclass(frozen=True)
class EndSession:
    session_id: str


def fields_from(
    *,
    content_type: str,
    body: bytes,
    query_string: str,
    form: Optional[Mapping[str, Any]] = None,
    files: Optional[Mapping[str, Any]] = None,
) -> HookpointFields:
    """Merge query, form and JSON fields; the body wins over the query string.

    ``form`` and ``files`` are the web framework's parsed multipart/urlencoded
    body (mappings of name to a list of values), passed in so this module needs
    no web framework.
    """
    values: Dict[str, str] = {}
    for key, value in parse_qsl(query_string, keep_blank_values=True):
        values.setdefault(valid_text(key.lower()), valid_text(value))
    body_values: Dict[str, str] = {}
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/json":
        parsed = _json_object(body)
        for key, value in parsed.items():
            if isinstance(value, (dict, list)):
                continue
            lowered = valid_text(str(key).lower())
            if lowered not in body_values and value is not None:
                body_values[lowered] = valid_text(_scalar_text(value))
    elif form is not None:
        for key, value in form.items():
            first = value[0] if isinstance(value, list) and value else value
            if isinstance(first, str):
                body_values.setdefault(valid_text(str(key).lower()), valid_text(first))
    values.update(body_values)
    uploaded: Dict[str, UploadedFile] = {}
    for key, value in (files or {}).items():
        first = value[0] if isinstance(value, list) and value else value
        name = getattr(first, "name", None)
        content = getattr(first, "body", None)
        if isinstance(content, bytes):
            uploaded.setdefault(
                str(key).lower(),
                UploadedFile(
                    filename=valid_text(str(name or "file")),
                    content=content,
                    content_type=valid_text(
                        str(getattr(first, "type", "") or "application/octet-stream")
                    ),
                ),
            )
    return HookpointFields(values=values, files=uploaded)


def _json_object(body: bytes) -> Dict[Any, Any]:
    """The body as a JSON object; 400 for anything else, however malformed or deep."""
    if not body:
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HookpointInputError("body", f"not valid UTF-8 ({error.reason})") from error
    brackets = text.count("[") + text.count("{")
    if brackets > JSON_MAX_DEPTH and _json_depth(text) > JSON_MAX_DEPTH:
        raise HookpointInputError("body", f"JSON nested deeper than {JSON_MAX_DEPTH} levels")
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise HookpointInputError("body", f"not valid JSON ({str(error)[:120]})") from error
    if not isinstance(parsed, dict):
        raise HookpointInputError("body", "must be a JSON object")
    return parsed


def _json_depth(text: str) -> int:
    """The deepest nesting of brackets outside strings: an upper bound json.loads would reach."""
    depth = deepest = 0
    in_string = escaped = False
    for character in text:
        if in_string:
            if escaped:
                escaped = False
            elif character == "\\":
                escaped = True
            elif character == '"':
                in_string = False
        elif character == '"':
            in_string = True
        elif character in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > JSON_MAX_DEPTH:
                    return deepest
        elif character in "]}":
            depth -= 1
    return deepest


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_session_id(fields: HookpointFields) -> str:
    """The call's chat session id, checked; the route checks its token against it."""
    value = fields.text("sessionID")
    if value is None or value == "":
        raise HookpointInputError("sessionID", "required")
    try:
        return rules.SESSION_ID.check(value)
    except rules.FieldRuleError as error:
        raise HookpointInputError(error.field, error.rule, error.status) from error


def _agent(fields: HookpointFields) -> AgentIdentity:
    name = (fields.text("name") or "").strip()[: rules.AGENT_NAME_MAX_CHARS] or None
    picture = (fields.text("picture") or "").strip() or None
    if picture is not None:
        parts = urlsplit(picture)
        if (
            parts.scheme not in {"http", "https"}
            or not parts.netloc
            or len(picture) > rules.AGENT_PICTURE_MAX_CHARS
        ):
            # The picture is decoration: a bad one is dropped, the message still goes.
            logger.debug("Dropped an agent picture that is not an http(s) URL.")
            picture = None
    return AgentIdentity(name=name, picture=picture)


def parse_message(fields: HookpointFields) -> AgentMessage:
    session_id = read_session_id(fields)
    message = fields.text("message")
    if message is None or not message.strip():
        raise HookpointInputError("message", "required")
    if len(message) > rules.AGENT_MESSAGE_MAX_CHARS:
        raise HookpointInputError(
            "message", f"must be at most {rules.AGENT_MESSAGE_MAX_CHARS} characters", status=413
        )
    return AgentMessage(session_id=session_id, message=message, agent=_agent(fields))


def parse_upload(fields: HookpointFields) -> AgentUpload:
    session_id = read_session_id(fields)
    upload = fields.files.get("file")
    if upload is None:
        raise HookpointInputError("file", "required (a multipart file field named 'file')")
    if not upload.content:
        raise HookpointInputError("file", "is empty")
    return AgentUpload(session_id=session_id, file=upload, agent=_agent(fields))


def parse_typing(fields: HookpointFields) -> AgentTyping:
    session_id = read_session_id(fields)
    raw = fields.text("Typing")
    if raw is None or raw == "":
        raise HookpointInputError("Typing", "required (true or false)")
    try:
        typing = rules.parse_bool("Typing", raw)
    except rules.FieldRuleError as error:
        raise HookpointInputError(
            error.field, f"{error.rule}, got {raw[:20]!r}", error.status
        ) from error
    return AgentTyping(session_id=session_id, typing=typing)


def parse_end(fields: HookpointFields) -> EndSession:
    return EndSession(session_id=read_session_id(fields))
