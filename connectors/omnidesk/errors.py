"""What a failed Omnidesk call raises, and what Omnidesk's answer means.

Every failure is an ``OmnideskError``: which call failed, the HTTP status and
Omnidesk's message, never a token. ``read_answer`` maps a final answer (one
that is not retried) to its data or to the error it is; ``Secrets`` masks the
tokens in any text that may show them. client.py re-exports the errors, so
``from connectors.omnidesk.client import OmnideskError`` keeps working.
"""

import json
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, TypeVar

from yarl import URL

from connectors.omnidesk import rules
from connectors.omnidesk.settings import Secret
from connectors.omnidesk.transport import MAX_ANSWER_BYTES

_MASK = "***"

Redact = Callable[[str], str]

__all__ = [
    "OmnideskError",
    "OmnideskHTTPError",
    "OmnideskResponseError",
    "OmnideskUnavailable",
    "OmnideskValidationError",
    "Secrets",
    "checked",
    "json_object",
    "omnidesk_message",
    "read_answer",
]


class OmnideskError(Exception):
    """An Omnidesk call failed. Says which call, the HTTP status and Omnidesk's message.

    ``retryable`` tells the caller whether trying the same call later may work
    (Omnidesk was unreachable or overloaded) or not (the request itself was refused).
    """

    def __init__(
        self,
        call: str,
        reason: str,
        *,
        status: Optional[int] = None,
        omnidesk_message: Optional[str] = None,
        retryable: bool = False,
    ) -> None:
        self.call = call
        self.status = status
        self.omnidesk_message = omnidesk_message
        self.retryable = retryable
        self.reason = reason
        # Not super(): OmnideskValidationError is a FieldRuleError too, whose
        # constructor takes other arguments.
        Exception.__init__(self, f"Omnidesk {call} failed: {reason}")


class OmnideskValidationError(OmnideskError, rules.FieldRuleError):
    """A value breaks a field rule (``rules.FieldRuleError``); nothing was sent.

    ``field``, ``rule`` and ``status`` are the rule's: ``status`` is the one
    that fits the refusal (400, 413 for a file too large, 415 for a file type),
    not an answer from Omnidesk, which was never asked.
    """

    status: int

    def __init__(self, call: str, field: str, rule: str, status: int = 400) -> None:
        rules.FieldRuleError.__init__(self, field, rule, status)
        OmnideskError.__init__(self, call, f"not sent: {field}: {rule}", status=status)


class OmnideskHTTPError(OmnideskError):
    """Omnidesk refused the call: a non-2xx status that is not retried, or an error body."""


class OmnideskUnavailable(OmnideskError):
    """Omnidesk could not be reached, timed out or stayed overloaded (429/5xx) for every attempt."""

    def __init__(
        self,
        call: str,
        reason: str,
        *,
        status: Optional[int] = None,
        omnidesk_message: Optional[str] = None,
        attempts: int = 0,
    ) -> None:
        self.attempts = attempts
        super().__init__(
            call, reason, status=status, omnidesk_message=omnidesk_message, retryable=True
        )


class OmnideskResponseError(OmnideskError):
    """Omnidesk answered 2xx with a body that is not the JSON object we expect."""


_T = TypeVar("_T")


def checked(call: str, check: Callable[[Any], _T], value: Any) -> _T:
    """Apply one of ``rules``' checks; a broken rule is this call's validation error."""
    try:
        return check(value)
    except rules.FieldRuleError as error:
        raise OmnideskValidationError(call, error.field, error.rule, error.status) from None


class Secrets:
    """The settings' secrets, masked out of any text that may show them."""

    def __init__(self, secrets: Sequence[Optional[Secret]]) -> None:
        self._spellings = tuple(
            spelling
            for secret in secrets
            if secret is not None
            for spelling in _spellings(secret.reveal())
        )

    def redact(self, text: str) -> str:
        for secret in self._spellings:
            if secret:
                text = text.replace(secret, _MASK)
        return text


def _spellings(secret: str) -> Tuple[str, ...]:
    """A secret as it may show in a text: as it is, and as a query string encodes it.

    A network error's text may hold the request's URL, apiKey and all; an API
    key with '+', '/' or '=' shows there percent-encoded.
    """
    encoded = URL.build(query={"k": secret}).raw_query_string[len("k=") :]
    return (secret,) if encoded == secret else (secret, encoded)


def read_answer(call: str, status: int, body: bytes, redact: Redact) -> Dict[str, Any]:
    """Map a final (not retried) answer to its data, or to the error it is."""
    answer = json_object(body)
    message = omnidesk_message(answer, redact)
    if not 200 <= status < 300:
        reason = f"HTTP {status}" + (f": {message}" if message else "")
        raise OmnideskHTTPError(call, reason, status=status, omnidesk_message=message)
    if answer is None:
        raise OmnideskResponseError(
            call,
            f"HTTP {status} with a body that is not a JSON object "
            f"({len(body)} bytes{', cut off' if len(body) > MAX_ANSWER_BYTES else ''})",
            status=status,
        )
    if is_error_body(answer):
        reason = f"HTTP {status} with an error body" + (f": {message}" if message else "")
        raise OmnideskHTTPError(call, reason, status=status, omnidesk_message=message)
    return answer


def omnidesk_message(answer: Optional[Mapping[str, Any]], redact: Redact) -> Optional[str]:
    """Omnidesk's own words from an (error) answer, tokens masked, or None."""
    if answer is None:
        return None
    for key in ("message", "error"):
        value = answer.get(key)
        if isinstance(value, str) and value.strip():
            return redact(value.strip()[:500])
    return None


def json_object(body: bytes) -> Optional[Dict[str, Any]]:
    if len(body) > MAX_ANSWER_BYTES:
        return None
    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def is_error_body(answer: Mapping[str, Any]) -> bool:
    return answer.get("status") == "error" or answer.get("type") == "error"
